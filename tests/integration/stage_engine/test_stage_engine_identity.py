"""Identity merges in the stage engine, against the real database: a visitor's anonymous
activity, the link that names them and their known activity, in any order and split into
any batches, give the customer the history they would have had if every event had carried
the known id; nothing stays under the anonymous id, and what was published for it is
retracted."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from clm_events import db
from clm_events.consumer import Delivery
from clm_events.envelope import EVENT_ADAPTER
from clm_events.topics import Topics
from clm_stage_engine import repository as repo
from clm_stage_engine.handlers import StageEngine, load_timeline
from clm_stage_engine.models import SCHEMA

T0 = datetime(2024, 3, 1, 9, tzinfo=UTC)


def _event(subject: str, eid: str, kind: str, days: float, **data: Any) -> dict[str, Any]:
    at = (T0 + timedelta(days=days)).isoformat().replace("+00:00", "Z")
    return {
        "specversion": "1.0",
        "id": eid,
        "source": "web",
        "type": kind,
        "subject": subject,
        "time": at,
        "data": data,
    }


def _story(anon: str, known: str, anon_buys: int, known_buys: int) -> list[dict[str, Any]]:
    """A visitor who browses, maybe buys as a guest, signs in (the link) and buys more."""
    events = [
        _event(anon, "pv-1", "web.page_viewed", 0, url="/"),
        _event(anon, "tr-1", "web.tracked", 0.5, name="Product Viewed", properties={"sku": "a"}),
        _event(anon, "pv-2", "web.page_viewed", 1, url="/shoes"),
    ]
    events += [
        _event(anon, f"ga-{n}", "purchase.completed", 2 + 3 * n, order_id=f"g{n}", amount="25.00")
        for n in range(anon_buys)
    ]
    events.append(_event(known, "link-1", "identity.linked", 20, anonymous_id=anon))
    events += [
        _event(known, f"kb-{n}", "purchase.completed", 21 + 9 * n, order_id=f"k{n}", amount="40")
        for n in range(known_buys)
    ]
    for e in events:
        if e["type"] == "purchase.completed":
            e["data"]["currency"] = "EUR"
    return events


def _deliveries(events: list[dict[str, Any]]) -> list[Delivery]:
    return [Delivery(EVENT_ADAPTER.validate_python(e), None) for e in events]  # type: ignore[arg-type]


@pytest.fixture
async def sessions(migrated: str) -> AsyncIterator[Any]:
    engine: AsyncEngine = db.create_engine(migrated)
    yield db.session_factory(engine)
    await engine.dispose()


async def _handle(stage: StageEngine, sessions: Any, events: list[dict[str, Any]]) -> None:
    async with sessions() as s, s.begin():
        await stage.handle(s, _deliveries(events))


async def _history(s: AsyncSession, customer: str) -> list[list[Any]] | None:
    stored = await repo.lock_customers(s, [customer])
    if customer not in stored:
        return None
    return [t.compact() for t in load_timeline(customer, stored[customer]).history]


async def _net_published(s: AsyncSession, key: str) -> Counter[str]:
    """Per transition id: times published minus times retracted, from the outbox."""
    rows = await s.execute(
        sa.text(f"SELECT value FROM {SCHEMA}.outbox WHERE key = :k ORDER BY id"),
        {"k": key.encode()},
    )
    net: Counter[str] = Counter()
    for (value,) in rows:
        e = json.loads(value)
        if e["type"] == "lifecycle.stage_changed":
            net[e["data"]["transition_id"]] += 1
        elif e["type"] == "lifecycle.transition_retracted":
            net[e["data"]["transition_id"]] -= 1
    return +net


_orders = st.tuples(st.integers(0, 3), st.integers(0, 3))


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(buys=_orders, order=st.randoms(use_true_random=False), cuts=st.lists(st.integers(1, 12)))
async def test_a_merged_customer_has_the_history_of_one_id_throughout(
    sessions: Any, buys: tuple[int, int], order: Any, cuts: list[int]
) -> None:
    u = uuid.uuid4().hex[:8]
    anon, known, reference = f"anon-{u}", f"known-{u}", f"ref-{u}"
    events = _story(anon, known, *buys)
    stage = StageEngine(Topics(prefix=f"t{u}."), settle_seconds=0)
    # The reference: the same events, every one under the known id, in one batch.
    # (Its link names an anonymous id of its own, with no events.)
    same = [{**e, "subject": reference} for e in events]
    for e in same:
        if e["type"] == "identity.linked":
            e["data"] = {"anonymous_id": f"ref-anon-{u}"}
    await _handle(stage, sessions, same)
    # Shuffled, one replayed, split into batches at random points.
    arrivals = [*events, events[order.randrange(len(events))]]
    order.shuffle(arrivals)
    bounds = sorted({c % len(arrivals) for c in cuts} | {0, len(arrivals)})
    for lo, hi in itertools.pairwise(bounds):
        await _handle(stage, sessions, arrivals[lo:hi])

    async with sessions() as s, s.begin():
        expected = await _history(s, reference)
        assert await _history(s, known) == expected
        assert await _history(s, anon) is None  # nothing left under the anonymous id
        assert not await _net_published(s, anon)  # all it published is retracted
        # What consumers were told of the customer is their history.
        stored = await repo.lock_customers(s, [known])
        tl = load_timeline(known, stored[known])
        assert set(await _net_published(s, known)) == {t.id(known) for t in tl.history}
        assert [a for a, _ in await repo.linked_ids(s, known)] == [anon]


async def test_an_anonymous_event_racing_its_link_is_not_left_behind(sessions: Any) -> None:
    """The visitor's purchase and the link, handled at the same moment in two
    transactions (two replicas): the purchase ends with the customer every time."""
    stage = StageEngine(Topics(prefix="race."), settle_seconds=0)
    for n in range(12):
        anon, known = f"race-anon-{uuid.uuid4().hex[:8]}", f"race-known-{n}-{uuid.uuid4().hex[:6]}"
        buy = _event(anon, f"b-{n}", "purchase.completed", 1, order_id="o", amount="9")
        buy["data"]["currency"] = "EUR"
        link = _event(known, f"l-{n}", "identity.linked", 2, anonymous_id=anon)
        await asyncio.gather(_handle(stage, sessions, [buy]), _handle(stage, sessions, [link]))
        async with sessions() as s, s.begin():
            assert await _history(s, anon) is None
            history = await _history(s, known)
            assert history is not None and history[0][2] == "onboarding"


async def test_a_second_customer_for_the_same_anonymous_id_is_refused(sessions: Any) -> None:
    u = uuid.uuid4().hex[:8]
    anon, first, second = f"anon-{u}", f"first-{u}", f"second-{u}"
    stage = StageEngine(Topics(prefix=f"t{u}."), settle_seconds=0)
    buy = _event(anon, "b", "purchase.completed", 1, order_id="o", amount="9", currency="EUR")
    await _handle(stage, sessions, [buy])
    await _handle(stage, sessions, [_event(first, "l1", "identity.linked", 2, anonymous_id=anon)])
    await _handle(stage, sessions, [_event(second, "l2", "identity.linked", 3, anonymous_id=anon)])
    later = _event(anon, "pv", "web.page_viewed", 4, url="/")
    await _handle(stage, sessions, [later])
    async with sessions() as s, s.begin():
        assert (await repo.links_of(s, [anon])) == {anon: first}
        first_history = await _history(s, first)
        assert first_history is not None and first_history[0][2] == "onboarding"
        # The second customer has only their own (link) input: no purchase, no onboarding.
        assert all(t[2] != "onboarding" for t in await _history(s, second) or [])
