"""Privacy erasure and export in the stage engine, against the real broker and database:
an erasure request leaves nothing of the customer in any table of the schema (their
transitions only as anonymous rows, so flows still add up), events of the erased ids that
arrive afterwards leave nothing either, and the export shows everything before and
nothing after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from kit import bearer, fresh_database, make_key, produce, running
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from stagekit import buy, event, published, wait_for
from typer.testing import CliRunner

from clm_events.envelope import (
    Event,
    PrivacyErasureCompletedEvent,
    PrivacyErasureRequestedEvent,
    encode_structured,
    new_event,
)
from clm_events.privacy import Tombstones, erase_customers
from clm_events.settings import DEVELOPMENT_HASH_KEY
from clm_events.topics import Topics
from clm_stage_engine import models
from clm_stage_engine import repository as repo
from clm_stage_engine.cli import app as cli
from clm_stage_engine.domain.inputs import PURCHASE, Input, to_us
from clm_stage_engine.handlers import StageEngine
from clm_stage_engine.models import SCHEMA, privacy_tombstones
from clm_stage_engine.timers import TimerLoop

FLOWS = {"from": "2020-01-01T00:00:00Z", "to": "2029-01-01T00:00:00Z"}


@pytest.fixture(scope="module")
async def own(database_url: str) -> AsyncIterator[str]:
    """A database of its own: stage counts and flows are over every customer in it."""
    async with fresh_database(database_url) as url:
        yield url


@pytest.fixture(scope="module")
async def own_engine(own: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(own)
    yield engine
    await engine.dispose()


async def holding(engine: AsyncEngine, *needles: str) -> list[tuple[str, str]]:
    """(table, row) of every row of every table of the schema whose text, or whose bytes
    (JSON blobs are bytea, shown in hex), contain one of the needles: what a dump of the
    schema would show of the person."""
    hexes = [n.encode().hex() for n in needles]
    found: list[tuple[str, str]] = []
    async with engine.connect() as conn:
        tables = await conn.scalars(
            sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": SCHEMA},
        )
        for table in list(tables):
            rows = await conn.scalars(
                sa.text(
                    f'SELECT t::text FROM {SCHEMA}."{table}" AS t '
                    "WHERE t::text ILIKE ANY(:patterns)"
                ),
                {"patterns": [f"%{n}%" for n in [*needles, *hexes]]},
            )
            found += [(table, row) for row in rows]
    return found


def _request(request_id: str, ids: list[str]) -> tuple[bytes, bytes]:
    """A `privacy.erasure_requested` as ingest sends it: (key, value)."""
    e = new_event(
        "privacy.erasure_requested",
        id=request_id,
        source="clm/ingest",
        subject=ids[0],
        data={"request_id": request_id, "customer_ids": ids},
    )
    return ids[0].encode(), encode_structured(e)


async def _erase(bootstrap: str, runtime: Any, request_id: str, ids: list[str]) -> dict[str, int]:
    """Request the erasure and wait for the stage engine's completion; its counts."""
    key, value = _request(request_id, ids)
    await produce(bootstrap, runtime.topics.privacy, [value], key=lambda _: key)

    def done(events: list[Event]) -> bool:
        return any(_completion(e, request_id) is not None for e in events)

    events = await published(bootstrap, runtime.topics.privacy, done, timeout=30)
    counts = [c for e in events if (c := _completion(e, request_id)) is not None]
    assert len(counts) == 1, events
    return counts[0]


def _completion(e: Event, request_id: str) -> dict[str, int] | None:
    if isinstance(e, PrivacyErasureCompletedEvent) and e.data.request_id == request_id:
        assert e.data.service == "stage-engine"
        assert e.subject == request_id  # the answer names no customer
        return dict(e.data.erased)
    return None


async def _publish(bootstrap: str, topics: Topics, events: list[dict[str, Any]]) -> None:
    for e in events:
        await produce(bootstrap, topics.domain(e["type"]), [e])


def _story(u: str) -> tuple[str, str, str, list[dict[str, Any]]]:
    """A visitor who browses anonymously, signs up (named, with an email), is linked and
    buys; their stage history moves through several stages."""
    ada, anon, bob = f"ada-{u}", f"anon-{u}", f"bob-{u}"
    return (
        ada,
        anon,
        bob,
        [
            event(anon, f"pv-{u}", "web.page_viewed", "2021-01-01T09:00:00Z", url="/"),
            event(
                ada,
                f"su-{u}",
                "web.signed_up",
                "2021-01-02T09:00:00Z",
                email=f"ada.{u}@example.com",
                traits={"name": f"Ada Lovelace {u}"},
            ),
            event(ada, f"ln-{u}", "identity.linked", "2021-01-02T09:01:00Z", anonymous_id=anon),
            buy(ada, f"{u}-1", "2021-01-05T12:00:00Z"),
            buy(ada, f"{u}-2", "2021-01-20T12:00:00Z"),
            buy(ada, f"{u}-3", "2021-02-10T12:00:00Z"),
            event(ada, f"nps-{u}", "support.nps_submitted", "2021-03-02T12:00:00Z", score=9),
            event(bob, f"bsu-{u}", "web.signed_up", "2021-01-03T09:00:00Z", email="b@x.org"),
            buy(bob, f"{u}-b", "2021-01-06T12:00:00Z"),
        ],
    )


async def _get(client: httpx.AsyncClient, path: str, key: str, **params: Any) -> Any:
    r = await client.get(path, headers=bearer(key), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _held(export: dict[str, Any]) -> tuple[Any, ...]:
    """What an export shows that only events change (facts as of now age by the call)."""
    return export["customer"]["stage"], export["transitions"], export["inputs"]


def _dropped(group: str, topic: str) -> float:
    labels = {"group": group, "topic": topic}
    return REGISTRY.get_sample_value("clm_privacy_dropped_events_total", labels) or 0.0


async def test_an_erasure_leaves_nothing_of_the_customer_and_the_flows_still_add_up(
    own: str, own_engine: AsyncEngine, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:8]
    ada, anon, bob, story = _story(u)
    needles = [ada, anon, f"ada.{u}@example.com", f"Ada Lovelace {u}"]
    admin, read = await make_key(own, "admin"), await make_key(own, "read")
    async with running(
        "clm_stage_engine", own, bootstrap_servers, timer_interval=0.2, settle_seconds=0.5
    ) as (client, runtime):
        await _publish(bootstrap_servers, runtime.topics, story)

        async def export(cid: str) -> Any:
            return await _get(client, f"/v1/privacy/customers/{cid}", admin)

        # Settled: every event applied (her visitor merged in), and time has moved both
        # to lapsed, where it leaves them: the aggregates stay still from here.
        def settled(inputs: int) -> Callable[[Any], bool]:
            def check(x: Any) -> bool:
                c = x["customer"]
                return bool(c and c["stage"] == "lapsed" and len(x["inputs"]) == inputs)

            return check

        before = await wait_for(lambda: export(ada), settled(7))
        assert settled(7)(before), before
        bob_before = await wait_for(lambda: export(bob), settled(2))
        assert settled(2)(bob_before), bob_before

        # (d) The export holds all of it, readable.
        assert before["service"] == "stage-engine" and before["found"] is True
        assert before["customer"]["facts"]["email"] == f"ada.{u}@example.com"
        assert before["customer"]["facts"]["name"] == f"Ada Lovelace {u}"
        assert before["customer"]["facts"]["purchases_total"] == 3
        assert [t["to_stage"] for t in before["transitions"]][:3] == [
            "prospect",
            "onboarding",
            "active",
        ]
        assert before["transitions"][1]["facts"]["email"] == f"ada.{u}@example.com"
        first = before["inputs"][0]  # the visitor's page view, merged into ada
        assert first == {
            "source": "shop",
            "event_id": f"pv-{u}",
            "time": "2021-01-01T09:00:00Z",
            "type": "web.page_viewed",
            "data": {},
        }
        assert [i["event_id"] for i in before["inputs"]].count(f"ord-{u}-2") == 1
        assert [x["anonymous_id"] for x in before["linked_ids"]] == [anon]
        visitor = await export(anon)
        assert visitor["found"] is True and visitor["merged_into"] == ada
        assert visitor["customer"] is None and visitor["inputs"] == []

        flows = await _get(client, "/v1/flows", read, **FLOWS)
        stages = await _get(client, "/v1/stages", read)
        assert await holding(own_engine, *needles)  # the helper sees the person

        # (a) The request is carried out and answered with the counts.
        counts = await _erase(bootstrap_servers, runtime, f"era-{u}", [ada, anon])
        history = len(before["transitions"])
        assert counts["customers"] == 1
        assert counts["inputs"] == 7
        assert counts["transitions"] == history
        assert counts["identity_links"] == 1
        assert counts["outbox"] >= history  # what was published about her, under both ids
        assert await holding(own_engine, *needles) == []

        # (c) Flows add up as before; stage counts drop her, and only her.
        assert await _get(client, "/v1/flows", read, **FLOWS) == flows
        after = await _get(client, "/v1/stages", read)
        expected = dict(stages["stages"])
        expected[before["customer"]["stage"]] -= 1
        assert after == {"stages": expected, "total": stages["total"] - 1}
        async with own_engine.connect() as conn:
            kept = await conn.scalar(sa.text(f"SELECT count(*) FROM {SCHEMA}.erased_transitions"))
        assert kept == history
        assert _held(await export(bob)) == _held(bob_before)
        r = await client.get(f"/v1/customers/{ada}", headers=bearer(read))
        assert r.status_code == 404

        # (d) Nothing is left to export, under either id.
        for cid in (ada, anon):
            assert await export(cid) == {
                "service": "stage-engine",
                "customer_id": cid,
                "found": False,
                "customer": None,
                "transitions": [],
                "inputs": [],
                "linked_ids": [],
                "merged_into": None,
            }

        # (b) A replay of her events, and new ones under both ids, leave nothing: on each
        # topic a new event follows the replayed ones (same key, so the same partition),
        # and once those are dropped everything before them was consumed.
        group = runtime.settings.group_id
        fresh = [
            buy(ada, f"{u}-9", "2021-06-01T12:00:00Z"),
            event(ada, f"su2-{u}", "web.identified", "2021-06-01T12:00:00Z", traits={}),
            event(ada, f"nps2-{u}", "support.nps_submitted", "2021-06-02T12:00:00Z", score=1),
            event(anon, f"pv2-{u}", "web.page_viewed", "2021-06-03T12:00:00Z", url="/"),
        ]
        topics = {runtime.topics.domain(e["type"]) for e in fresh}
        dropped = {t: _dropped(group, t) for t in topics}
        replay = [e for e in story if e["subject"] in (ada, anon)]
        await _publish(bootstrap_servers, runtime.topics, [*replay, *fresh])

        async def drops() -> float:
            return sum(_dropped(group, t) - dropped[t] for t in topics)

        assert await wait_for(drops, lambda n: n >= len(fresh)) == len(fresh)
        assert await holding(own_engine, *needles) == []
        assert await _get(client, "/v1/flows", read, **FLOWS) == flows

        # (e) A second request for the same ids completes too, with nothing left to erase.
        again = await _erase(bootstrap_servers, runtime, f"era2-{u}", [ada, anon])
        assert again == dict.fromkeys(counts, 0)
        assert _held(await export(bob)) == _held(bob_before)


# -- writers outside the consumer runner ---------------------------------------------


def _tombstones() -> Tombstones:
    """As the service's Runtime builds them under the default settings."""
    return Tombstones(privacy_tombstones, DEVELOPMENT_HASH_KEY.encode(), timedelta(days=1))


async def _stored(engine: AsyncEngine, customer: str) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.text(f"SELECT count(*) FROM {SCHEMA}.customers WHERE customer_id = :c"),
            {"c": customer},
        )
    return int(n or 0)


async def test_the_timer_waits_for_an_erasure_in_progress_and_brings_no_one_back(
    own: str, own_engine: AsyncEngine
) -> None:
    u = uuid.uuid4().hex[:8]
    cid = f"due-{u}"
    sessions = async_sessionmaker(own_engine, expire_on_commit=False)
    stage = StageEngine(Topics(prefix=f"t{u}."), settle_seconds=0)
    bought = Input(to_us(datetime(2021, 5, 1, 12, tzinfo=UTC)), "shop", f"o-{u}", PURCHASE, {})
    async with sessions() as s, s.begin():
        await stage.apply(s, {cid: [bought]})  # due at the next midnight
    tombstones = _tombstones()
    timer = TimerLoop(stage, sessions, tombstones=tombstones)
    request = new_event(
        "privacy.erasure_requested",
        id=f"era-{u}",
        source="clm/ingest",
        subject=cid,
        data={"request_id": f"era-{u}", "customer_ids": [cid]},
    )
    assert isinstance(request, PrivacyErasureRequestedEvent)
    async with sessions() as s, s.begin():
        # The erasure step the privacy consumer runs, in a transaction held open here.
        await erase_customers(
            s,
            request,
            service="stage-engine",
            tombstones=tombstones,
            outbox=models.outbox,
            topic=f"t{u}.privacy",
            erase=repo.erase,
        )
        # The erasure holds its lock: a sweep (which would skip the locked row and go on)
        # waits for it instead of running alongside.
        sweep = asyncio.ensure_future(timer.sweep(datetime.now(UTC)))
        await asyncio.sleep(0.5)
        assert not sweep.done()
    await sweep
    assert await _stored(own_engine, cid) == 0
    assert await holding(own_engine, cid) == []


async def test_a_backfill_skips_erased_customers(
    own: str, own_engine: AsyncEngine, tmp_path: Path
) -> None:
    u = uuid.uuid4().hex[:8]
    gone, kept = f"gone-{u}", f"kept-{u}"
    async with own_engine.begin() as conn:
        async with AsyncSession(bind=conn) as s:
            await _tombstones().bury(s, [gone])
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,order_id,time,amount,currency\n"
        f"{gone},g-{u},2021-01-01T00:00:00Z,10.00,EUR\n"
        f"{kept},k-{u},2021-01-01T00:00:00Z,10.00,EUR\n"
    )
    env = {"CLM_DATABASE_URL": own, "CLM_LOG_JSON": "false"}
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["backfill", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "1 erased customers skipped" in result.output
    assert await _stored(own_engine, kept) == 1
    assert await holding(own_engine, gone) == []
