"""Segments against the real database: live membership written by the consumer handler
equals a full evaluation from scratch, whatever the events, batches and a concurrent
recompute of a new version; the estimate equals the first full count; a condition that
mixes types is refused naming `condition` and saves nothing."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import bearer, fresh_database, running
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import repository
from clm_campaigns.domain.policy import GlobalCap
from clm_campaigns.domain.segments import CompiledSegment, compile_segment_condition
from clm_campaigns.handlers import Campaigns, TriggerCache
from clm_campaigns.segments import Recompute, SegmentCache, estimate
from clm_events import db
from clm_events.catalog import RFM_SEGMENTS, Stage
from clm_events.consumer import Delivery
from clm_events.envelope import new_event

CONDITIONS = {
    "seg_stage": 'stage == "at_risk"',
    "seg_rfm": 'scores.rfm_segment == "At risk" || scores.rfm_recency >= 4',
    "seg_mixed": 'facts.purchases_total >= 2 && traits.plan == "gold"',
}
NEW_VERSION = 'stage in ["active", "at_risk"] && scores.churn_probability > 0.5'
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def own_db(database_url: str) -> AsyncIterator[Any]:
    """A database of its own: recomputes page over every customer it holds."""
    async with fresh_database(database_url) as url:
        engine = db.create_engine(url)
        yield async_sessionmaker(engine, expire_on_commit=False)
        await engine.dispose()


def _event(customer: str, n: int, kind: str, value: Any) -> Delivery:
    time = T0 + timedelta(minutes=n)
    if kind == "stage":
        stage, purchases = value
        type_, data = (
            "lifecycle.stage_changed",
            {
                "from_stage": None,
                "to_stage": stage,
                "at": time.isoformat(),
                "cause": "test",
                "facts": {"purchases_total": purchases},
            },
        )
    elif kind == "score":
        rfm, recency, churn = value
        type_, data = (
            "lifecycle.score_updated",
            {
                "clv": "10.00",
                "churn_probability": churn,
                "p_alive": 0.5,
                "expected_purchases": 1.0,
                "model": "test",
                "rfm_recency": recency,
                "rfm_segment": rfm,
            },
        )
    else:
        type_, data = "web.identified", {"traits": {"plan": value}}
    e = new_event(
        type_, id=f"e-{uuid.uuid4().hex}", source="test", subject=customer, data=data, time=time
    )
    return Delivery(e, None)  # type: ignore[arg-type]


_change = st.one_of(
    st.tuples(
        st.just("stage"), st.tuples(st.sampled_from([s.value for s in Stage]), st.integers(0, 3))
    ),
    st.tuples(
        st.just("score"),
        st.tuples(
            st.sampled_from([None, *RFM_SEGMENTS]),
            st.one_of(st.none(), st.integers(1, 5)),
            st.sampled_from([0.1, 0.9]),
        ),
    ),
    st.tuples(st.just("traits"), st.sampled_from(["gold", "free"])),
)
_stream = st.lists(st.tuples(st.integers(0, 3), _change), min_size=1, max_size=20)


def _handler(cache: SegmentCache) -> Campaigns:
    return Campaigns(
        triggers=TriggerCache(),
        actions_topic="test.actions",
        global_cap=GlobalCap(100, timedelta(days=1)),
        default_timezone="UTC",
        segments=cache,
    )


async def _reset(session: AsyncSession) -> None:
    for table in ("segment_members", "segment_versions", "segments", "customers"):
        await session.execute(sa.text(f"DELETE FROM campaigns.{table}"))


async def _live(session: AsyncSession) -> set[tuple[str, str]]:
    rows = await session.execute(
        sa.text("SELECT segment_id, customer_id FROM campaigns.segment_members")
    )
    return {(r.segment_id, r.customer_id) for r in rows}


async def _full(session: AsyncSession) -> set[tuple[str, str]]:
    """Every segment's membership evaluated from scratch over the projection."""
    states = await repository.customers_page(session, "", 10_000)
    out = set()
    for row in await repository.list_segments(session):
        segment = CompiledSegment(row.id, row.version, compile_segment_condition(row.condition))
        out |= {(row.id, s.customer_id) for s in states if segment.matches(s)}
    return out


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stream=_stream,
    tail=_stream,
    cuts=st.lists(st.integers(1, 20)),
    change_at=st.integers(0, 20),
)
async def test_live_membership_equals_a_full_recomputation(
    own_db: Any, stream: list[Any], tail: list[Any], cuts: list[int], change_at: int
) -> None:
    """Segments saved before any customer (their recompute finds no one: the live path
    alone keeps them), one of them changed midway with its recompute interleaved with the
    batches, then more events once that recompute is done."""
    sessions = own_db
    cache = SegmentCache()
    handler = _handler(cache)
    recompute = Recompute(sessions, cache, page=2, pause=0)
    async with sessions() as s, s.begin():
        await _reset(s)
        for seg_id, condition in CONDITIONS.items():
            await repository.insert_segment(
                s, segment_id=seg_id, name=seg_id, description="", condition=condition, by="key_t"
            )
    for seg_id in CONDITIONS:
        while await recompute.step(seg_id):
            pass
    events = [_event(f"c{who}", n, *change) for n, (who, change) in enumerate(stream)]
    bounds = sorted({c % len(events) for c in cuts} | {0, len(events)})
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        async with sessions() as s, s.begin():
            await handler(s, events[lo:hi])
        # A recompute page between batches, and once a new version of a segment.
        await recompute.step("seg_rfm")
        if i == change_at % len(bounds):
            async with sessions() as s, s.begin():
                row = await repository.get_segment(s, "seg_rfm", for_update=True)
                assert row is not None
                await repository.change_segment(
                    s, row, change="updated", by="key_t", condition=NEW_VERSION
                )
    while await recompute.step("seg_rfm"):
        pass
    for n, (who, change) in enumerate(tail, start=len(stream)):
        async with sessions() as s, s.begin():
            await handler(s, [_event(f"c{who}", n, *change)])
    async with sessions() as s:
        assert await _live(s) == await _full(s)
        progress = (await repository.get_segment(s, "seg_rfm")).recompute  # type: ignore[union-attr]
        assert progress["finished_at"] and progress["done"] == progress["total"]


async def test_the_estimate_equals_the_saved_segments_first_full_count(own_db: Any) -> None:
    sessions = own_db
    cache = SegmentCache()
    async with sessions() as s, s.begin():
        await _reset(s)
    handler = _handler(cache)
    deliveries = [
        _event(f"e{i:03}", i, "stage", ("at_risk" if i % 3 else "active", i % 4)) for i in range(60)
    ]
    async with sessions() as s, s.begin():
        await handler(s, deliveries)
    condition = 'stage == "at_risk" && facts.purchases_total >= 2'
    draft = CompiledSegment("draft", 0, compile_segment_condition(condition))
    async with sessions() as s:
        counted = await estimate(s, draft, page=7)  # several pages
    async with sessions() as s, s.begin():
        await repository.insert_segment(
            s, segment_id="seg_est", name="est", description="", condition=condition, by="key_t"
        )
    recompute = Recompute(sessions, cache, page=7, pause=0)
    while await recompute.step("seg_est"):
        pass
    async with sessions() as s:
        assert counted == await repository.segment_size(s, "seg_est") == 20


async def test_a_type_error_names_the_condition_and_saves_nothing(
    migrated: str, bootstrap_servers: str, admin_key: str, read_key: str
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        admin = bearer(admin_key)
        before = (await client.get("/v1/segments", headers=bearer(read_key))).json()
        for condition, reason in [
            ('facts.purchases_total == "two"', "facts.purchases_total is a number"),
            ("scores.rfm_recency > 2.5 + facts.purchases_total", "mixes types"),
            ('scores.rfm_segment == "at risk"', "scores.rfm_segment is one of"),
            ('event.type == "x"', "sees no event"),
        ]:
            body = {"name": "bad", "condition": condition}
            refused = await client.post("/v1/segments", json=body, headers=admin)
            assert refused.status_code == 422, refused.text
            [error] = refused.json()["detail"]
            assert error["loc"] == ["body", "condition"]
            assert reason in error["msg"], error["msg"]
            estimate = await client.post(
                "/v1/segments/estimate", json={"condition": condition}, headers=admin
            )
            assert estimate.status_code == 422
        assert (await client.get("/v1/segments", headers=bearer(read_key))).json() == before
