"""Scoring announces its RFM cut points with the served model, whenever they change, and
its schedule prunes RFM segment changes past their retention. Each test has a database
of its own: cut points and the last announcement are state of the whole base."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from kit import fresh_database
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_events.envelope import parse_structured
from clm_events.privacy import Tombstones
from clm_events.rfm import Cuts
from clm_events.scoremodel import ServedModel
from clm_events.settings import ClmSettings
from clm_events.topics import Topics, ensure_topics
from clm_scoring import models, repository
from clm_scoring.config import Settings
from clm_scoring.domain.summary import PurchaseHistory
from clm_scoring.jobs import Jobs, Scorer


@asynccontextmanager
async def jobs_on(url: str, bootstrap: str, **settings: object) -> AsyncIterator[Jobs]:
    engine = create_async_engine(url)
    topics = Topics(prefix=f"s{uuid.uuid4().hex[:8]}.", partitions=2)
    await ensure_topics(bootstrap, topics.all())
    scorer = Scorer(Settings(common=ClmSettings(database_url=url), **settings), topics)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        yield Jobs(scorer, sessions, Tombstones(models.privacy_tombstones, b"k", timedelta(1)))
    finally:
        await engine.dispose()


def bought(days_ago: int, purchase_days: int, spend: int, as_of: date) -> PurchaseHistory:
    last = as_of - timedelta(days=days_ago)
    return PurchaseHistory(
        last - timedelta(days=7 * (purchase_days - 1)),
        last,
        purchase_days,
        Decimal(spend),
        Decimal(0),
    )


async def queued(jobs: Jobs) -> list[ServedModel]:
    """The served-model announcements in the outbox, oldest first."""
    o = models.outbox.c
    async with jobs.sessions() as session:
        rows = await session.execute(
            sa.select(o.value).where(o.topic == jobs.scorer.topics.models).order_by(o.id)
        )
        return [
            ServedModel.from_json(parse_structured(bytes(v)).data.model_dump()) for (v,) in rows
        ]


async def test_new_cut_points_are_announced_with_the_served_model_and_equal_ones_are_not(
    database_url: str, bootstrap_servers: str
) -> None:
    as_of = date(2026, 6, 30)
    async with fresh_database(database_url) as url, jobs_on(url, bootstrap_servers) as jobs:
        await jobs.refit(trigger="test", as_of=as_of)  # nobody yet: no cut points
        async with jobs.sessions() as session, session.begin():
            await repository.save_histories(
                session,
                {f"c{n}": bought(10 * n, 1 + n % 4, 20 * (n + 1), as_of) for n in range(10)},
            )
        first = await jobs.recompute_cuts(trigger="test", as_of=as_of)
        same = await jobs.recompute_cuts(trigger="test", as_of=as_of)  # same base, same day
        later = await jobs.recompute_cuts(trigger="test", as_of=as_of + timedelta(days=5))
        announced = await queued(jobs)
        o = models.outbox.c
        async with jobs.sessions() as session:
            ids = list(await session.scalars(sa.select(o.event_id).order_by(o.id)))
            model = await repository.current_model(session)

    assert model is not None and model["version"] == 1
    # The refit's announcement had no cut points; each change of the points is announced
    # with the same model version, under an id of its own.
    assert [a.rfm for a in announced] == [
        None,
        Cuts(*(tuple(first[m]) for m in ("recency", "frequency", "monetary")), first["version"]),
        Cuts(*(tuple(later[m]) for m in ("recency", "frequency", "monetary")), later["version"]),
    ]
    assert same["version"] == first["version"] + 1 and same["recency"] == first["recency"]
    assert [a.version for a in announced] == [1, 1, 1]
    assert ids == ["score-model:1", f"score-model:1:rfm:{first['version']}",
                   f"score-model:1:rfm:{later['version']}"]  # fmt: skip
    # Five days later every customer's recency is five days more.
    assert later["recency"] == [r + 5 for r in first["recency"]]


async def test_the_schedule_prunes_segment_changes_past_retention_keeping_each_latest(
    database_url: str, bootstrap_servers: str
) -> None:
    now = datetime.now(UTC)

    def move(customer: str, days_ago: int, before: str | None, to: str) -> dict[str, object]:
        at = now - timedelta(days=days_ago)
        return {"customer_id": customer, "moved_at": at, "from_segment": before, "to_segment": to}

    history = [
        move("a", 500, None, "New"),
        move("a", 450, "New", "Champions"),
        move("a", 10, "Champions", "At risk"),
        move("b", 600, None, "Lost"),
        move("c", 420, None, "New"),
        move("c", 410, "New", "Hibernating"),
        move("c", 405, "Hibernating", "Lost"),
    ]
    window = (now - timedelta(days=30), now)
    async with (
        fresh_database(database_url) as url,
        jobs_on(url, bootstrap_servers, rfm_moves_days=400) as jobs,
    ):
        async with jobs.sessions() as session, session.begin():
            await repository.add_moves(session, history)
            flows_before = await repository.rfm_flows(session, *window)
        loop = asyncio.create_task(jobs.rfm_loop())  # no cut points yet: runs at once
        m = models.rfm_moves.c
        try:
            for _ in range(200):
                async with jobs.sessions() as session:
                    left = (
                        await session.execute(
                            sa.select(m.customer_id, m.to_segment).order_by(m.customer_id, m.id)
                        )
                    ).all()
                if len(left) < len(history):
                    break
                await asyncio.sleep(0.05)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        async with jobs.sessions() as session:
            flows_after = await repository.rfm_flows(session, *window)

    # Older than 400 days is gone, but each customer's latest older change: the segment
    # they were in 400 days ago, from which the moves of a later window are counted.
    assert [tuple(r) for r in left] == [("a", "Champions"), ("a", "At risk"), ("b", "Lost"),
                                        ("c", "Lost")]  # fmt: skip
    assert [tuple(r) for r in flows_after] == [tuple(r) for r in flows_before]
    assert [tuple(r) for r in flows_after] == [("Champions", "At risk", 1)]
