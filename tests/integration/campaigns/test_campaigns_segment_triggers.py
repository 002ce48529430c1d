"""Triggers on entering and leaving a segment, against the real database: whatever the
events and however they are split into batches, an entered_segment trigger records one
action per entry into the segment and a left_segment trigger one per exit, as a full
evaluation after every batch counts them; recomputing an edited segment messages nobody;
and, through the broker, enrolment of current members, exits and the send-time re-check."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from campaignkit import (
    ALLOW_LOCAL,
    WebhookReceiver,
    actions,
    cid,
    event,
    eventually,
    projected,
    publish,
    transition,
    webhook_trigger,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import bearer, fresh_database, running
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from test_campaigns_segments import _event, _full, _handler, _reset, _stream

from clm_campaigns import repository
from clm_campaigns.segments import Recompute, SegmentCache
from clm_events import db

SEGMENT = "seg_watch"
CONDITION = 'stage == "at_risk" || traits.plan == "gold"'


@pytest.fixture(scope="module")
async def own_db(database_url: str) -> AsyncIterator[Any]:
    """A database of its own: recomputes page over every customer it holds."""
    async with fresh_database(database_url) as url:
        engine = db.create_engine(url)
        yield async_sessionmaker(engine, expire_on_commit=False)
        await engine.dispose()


def _trigger(kind: str) -> dict[str, Any]:
    return {
        "name": kind,
        "on": {"kind": kind, "segment_id": SEGMENT},
        "action": {"channel": "kafka", "topic": "test.out", "payload": "{{ customer.id }}"},
        "max_age_seconds": None,  # the test's events are from June
    }


async def _start(sessions: Any, condition: str = CONDITION) -> Recompute:
    """An empty projection, the segment and a trigger on each of its occasions."""
    cache = SegmentCache()
    async with sessions() as s, s.begin():
        await _reset(s)
        await s.execute(sa.text("DELETE FROM campaigns.actions"))
        for table in ("trigger_versions", "triggers"):
            await s.execute(sa.text(f"DELETE FROM campaigns.{table}"))
        await repository.insert_segment(
            s, segment_id=SEGMENT, name="watch", description="", condition=condition, by="key_t"
        )
        for kind in ("entered_segment", "left_segment"):
            await repository.insert_trigger(
                s, trigger_id=kind, definition=_trigger(kind), enabled=True, by="key_t"
            )
    recompute = Recompute(sessions, cache, page=2, pause=0)
    while await recompute.step(SEGMENT):
        pass
    return recompute


async def _actions(session: AsyncSession) -> Counter[tuple[str, str]]:
    rows = await session.execute(sa.text("SELECT trigger_id, customer_id FROM campaigns.actions"))
    return Counter((r.trigger_id, r.customer_id) for r in rows)


async def _entry_keys(session: AsyncSession) -> list[tuple[str, str]]:
    rows = await session.execute(sa.text("SELECT customer_id, entry_key FROM campaigns.actions"))
    return [(r.customer_id, r.entry_key) for r in rows]


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=_stream, cuts=st.lists(st.integers(1, 20)))
async def test_each_entry_and_each_exit_fires_its_trigger_once(
    own_db: Any, stream: list[Any], cuts: list[int]
) -> None:
    sessions = own_db
    recompute = await _start(sessions)
    handler = _handler(recompute.cache)
    events = [_event(f"c{who}", n, *change) for n, (who, change) in enumerate(stream)]
    bounds = sorted({c % len(events) for c in cuts} | {0, len(events)})
    expected: Counter[tuple[str, str]] = Counter()
    before: set[str] = set()
    for lo, hi in itertools.pairwise(bounds):
        async with sessions() as s, s.begin():
            await handler(s, events[lo:hi])
        async with sessions() as s:
            now = {c for seg, c in await _full(s) if seg == SEGMENT}
        expected.update(("entered_segment", c) for c in now - before)
        expected.update(("left_segment", c) for c in before - now)
        before = now
    async with sessions() as s:
        assert await _actions(s) == expected
        keys = await _entry_keys(s)
        assert len(keys) == len(set(keys))  # every action is an entry (or exit) of its own


async def test_recomputing_an_edited_segment_messages_nobody(own_db: Any) -> None:
    sessions = own_db
    recompute = await _start(sessions, 'stage == "at_risk"')
    handler = _handler(recompute.cache)
    async with sessions() as s, s.begin():
        await handler(s, [_event("ada", 0, "stage", ("at_risk", 1))])
        await handler(s, [_event("bob", 1, "stage", ("active", 1))])

    async def edit(condition: str) -> None:
        async with sessions() as s, s.begin():
            row = await repository.get_segment(s, SEGMENT, for_update=True)
            assert row is not None
            await repository.change_segment(
                s, row, change="updated", by="key_t", condition=condition
            )

    # Bob comes in and Ada goes out by the edit alone; a batch of Bob's consumed while
    # the recompute has not reached him is no occasion either.
    await edit('stage == "active"')
    async with sessions() as s, s.begin():
        await handler(s, [_event("bob", 2, "traits", "gold")])
    while await recompute.step(SEGMENT):
        pass
    async with sessions() as s:
        assert {c for _, c in await _full(s)} == {"bob"}
        assert await _actions(s) == Counter({("entered_segment", "ada"): 1})
    # Once recomputed, consumed events move customers again, and fire.
    async with sessions() as s, s.begin():
        await handler(s, [_event("ada", 3, "stage", ("active", 1))])
        await handler(s, [_event("bob", 4, "stage", ("lapsed", 1))])
    async with sessions() as s:
        assert await _actions(s) == Counter(
            {
                ("entered_segment", "ada"): 2,
                ("left_segment", "bob"): 1,
            }
        )


async def test_over_http_members_enrol_once_and_later_entries_and_exits_fire(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    """Through the broker and the API: a trigger on entering a segment does not act on
    its current members until enrolled, and then once; a consumed transition that moves a
    customer in or out fires the trigger on entering or on leaving; a delayed action of
    an entry undone before it is due is suppressed as left_segment; a trigger on a segment that
    does not exist is refused naming the field, and a segment triggers fire on cannot be
    deleted."""
    tag = f"segtrg{uuid.uuid4().hex[:8]}"
    ada, bob, cy = cid(), cid(), cid()
    admin, reader = bearer(admin_key), bearer(read_key)
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        for customer in (ada, bob, cy):
            tagged = event(customer, "web.identified", {"traits": {"tag": tag}})
            await publish(bootstrap_servers, rt.topics.domain("web.identified"), customer, tagged)
        await publish(bootstrap_servers, rt.topics.transitions, ada, transition(ada, "at_risk"))
        for customer in (ada, bob, cy):
            await projected(engine, customer, f"traits->>'tag' = '{tag}'")
        await projected(engine, ada, "stage = 'at_risk'")
        body = {"name": tag, "condition": f'stage == "at_risk" && traits.tag == "{tag}"'}
        segment = (await client.post("/v1/segments", json=body, headers=admin)).json()["id"]

        async def recomputed() -> bool:
            seg = (await client.get(f"/v1/segments/{segment}", headers=reader)).json()
            return bool((seg["recompute"] or {}).get("finished_at"))

        await eventually(recomputed, what="the segment's first recompute")

        def on(kind: str, **extra: Any) -> dict[str, Any]:
            body = webhook_trigger(receiver.url, **extra)
            body["on"] = {"kind": kind, "segment_id": segment}
            return body

        entered = await _create(client, admin, on("entered_segment"))
        left = await _create(client, admin, on("left_segment"))
        delayed = await _create(client, admin, on("entered_segment", delay_seconds=5))
        assert await actions(client, read_key, trigger_id=entered) == []  # not retroactive
        enrolled = await client.post(f"/v1/triggers/{entered}/enroll", headers=admin)
        again = await client.post(f"/v1/triggers/{entered}/enroll", headers=admin)
        assert enrolled.json()["enrolled"] == 1, enrolled.text
        assert again.json()["suppressed"] == {"duplicate_entry": 1}
        refused = await client.post(f"/v1/triggers/{left}/enroll", headers=admin)
        assert refused.status_code == 422

        # Bob enters, then leaves; Cy enters and leaves before the delayed action is due.
        await publish(bootstrap_servers, rt.topics.transitions, bob, transition(bob, "at_risk"))
        await _delivered(client, read_key, entered, bob)
        await publish(
            bootstrap_servers, rt.topics.transitions, bob, transition(bob, "won_back", "at_risk")
        )
        await _delivered(client, read_key, left, bob)
        await publish(bootstrap_servers, rt.topics.transitions, cy, transition(cy, "at_risk"))
        await _delivered(client, read_key, entered, cy)
        await publish(
            bootstrap_servers, rt.topics.transitions, cy, transition(cy, "active", "at_risk")
        )

        async def cy_settled() -> list[tuple[str, str, str | None]]:
            rows = await actions(client, read_key, customer_id=cy)
            out = sorted((r["trigger_id"], r["status"], r["suppressed_reason"]) for r in rows)
            done = all(status not in ("pending", "sending") for _, status, _ in out)
            return out if done else []

        assert await eventually(cy_settled, what="Cy's actions") == sorted(
            [
                (entered, "delivered", None),
                (left, "delivered", None),
                (delayed, "suppressed", "left_segment"),
            ]
        )
        ada_rows = await actions(client, read_key, customer_id=ada)
        assert sorted((r["trigger_id"], r["status"]) for r in ada_rows) == sorted(
            [(entered, "delivered"), (entered, "suppressed")]
        )
        received = Counter(r.json()["customer"] for r in receiver.received)
        assert received == {ada: 1, bob: 2, cy: 2}

        unknown = on("entered_segment")
        unknown["on"]["segment_id"] = "seg_missing"
        missing = await client.post("/v1/triggers", json=unknown, headers=admin)
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "on", "segment_id"]
        kept = await client.delete(f"/v1/segments/{segment}", headers=admin)
        assert kept.status_code == 409 and entered in kept.json()["detail"]


async def _create(client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]) -> str:
    created = await client.post("/v1/triggers", json=body, headers=admin)
    assert created.status_code == 201, created.text
    trigger_id: str = created.json()["id"]
    return trigger_id


async def _delivered(client: httpx.AsyncClient, key: str, trigger: str, customer: str) -> None:
    async def done() -> bool:
        rows = await actions(client, key, trigger_id=trigger, customer_id=customer)
        return [r["status"] for r in rows] == ["delivered"]

    await eventually(done, what=f"{trigger}'s action for {customer} delivered")
