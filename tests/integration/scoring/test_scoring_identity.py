"""Identity merges in scoring, against the real database (and broker, for the service): a
visitor's guest purchases and refunds, the link that names them and their purchases as the
known customer, in any order and split into any batches, give the customer the orders,
history and scores they would have had if every event had carried the known id; nothing
stays under the anonymous id, and what consumers were last told is the customer's score."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import bearer, fresh_database, make_key, produce, purchase, running
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from clm_events import db
from clm_events.consumer import Delivery
from clm_events.idempotency import claim_new
from clm_events.topics import Topics
from clm_scoring import models, repository
from clm_scoring.config import Settings
from clm_scoring.domain.scores import Published, material
from clm_scoring.handlers import decode, events_handler
from clm_scoring.jobs import Scorer, score_event_id

T0 = datetime(2026, 6, 1, 10, tzinfo=UTC)
AS_OF = date(2026, 9, 1)
TAG = "idm-"  # every id these tests make starts with it
SCORE_COLUMNS = ("p_alive", "churn_probability", "expected_purchases", "expected_spend", "clv")


def _event(subject: str, eid: str, kind: str, days: float, **data: Any) -> dict[str, Any]:
    at = (T0 + timedelta(days=days)).isoformat().replace("+00:00", "Z")
    return {
        "specversion": "1.0",
        "id": eid,
        "source": "shop",
        "type": kind,
        "subject": subject,
        "time": at,
        "data": data,
    }


# An order: (day, amount in cents, bought as the guest?, refund: (share, as the guest?)).
_order = st.tuples(
    st.integers(0, 60),
    st.integers(100, 20_000),
    st.booleans(),
    st.none() | st.tuples(st.sampled_from([0.25, 0.5, 1.0]), st.booleans()),
)


def _story(anon: str, known: str, orders: list[Any]) -> list[dict[str, Any]]:
    """A visitor who browses and may buy as a guest, signs in (the link) and buys more;
    some orders are refunded, the refund carrying whichever id the shop had then."""
    events = [
        _event(anon, "pv-1", "web.page_viewed", 0, url="/"),
        _event(known, "link-1", "identity.linked", 30, anonymous_id=anon),
    ]
    for n, (day, cents, guest, refund) in enumerate(orders):
        amount = f"{cents / 100:.2f}"
        who = anon if guest else known
        events.append(
            _event(who, f"buy-{n}", "purchase.completed", day, order_id=f"o{n}", amount=amount)
        )
        if refund is not None:
            share, guest_refund = refund
            back = f"{cents * share / 100:.2f}"
            who = anon if guest_refund else known
            events.append(
                _event(who, f"ref-{n}", "purchase.refunded", day + 1, order_id=f"o{n}", amount=back)
            )
    for e in events:
        if e["type"].startswith("purchase."):
            e["data"]["currency"] = "EUR"
    return events


@pytest.fixture
async def own_database(database_url: str) -> AsyncIterator[str]:
    """A database of these tests' own: a scoring service started by another test on the
    shared one rescores every customer it holds after new RFM cut points, and its relay
    would publish (and delete) the score events these tests count; and the random
    histories scored here would move the models other tests' refits expect."""
    async with fresh_database(database_url) as url:
        yield url


@pytest.fixture
async def sessions(own_database: str) -> AsyncIterator[Any]:
    engine: AsyncEngine = db.create_engine(own_database)
    yield db.session_factory(engine)
    await engine.dispose()


def _scorer(prefix: str) -> Scorer:
    return Scorer(Settings(), Topics(prefix=prefix))


async def _consume(scorer: Scorer, sessions: Any, group: str, events: list[dict[str, Any]]) -> None:
    """One batch as the consumer runner applies it: decoded, deduplicated on (source, id)
    and handled in one transaction."""
    deliveries = [Delivery(decode([], json.dumps(e).encode()), None) for e in events]
    async with sessions() as s, s.begin():
        new = await claim_new(s, models.processed_events, group, (d.key for d in deliveries))
        fresh = []
        for d in deliveries:
            if d.key in new:
                new.discard(d.key)
                fresh.append(d)
        await events_handler(scorer, clock=lambda: AS_OF)(s, fresh)


async def _state(s: AsyncSession, customer: str) -> dict[str, Any]:
    """What scoring stores for a customer, without the id."""
    o, c, sc = models.orders.c, models.customers.c, models.scores.c
    orders = await s.execute(
        sa.select(o.order_id, o.purchased_on, o.amount, o.refunded)
        .where(o.customer_id == customer)
        .order_by(o.order_id)
    )
    history = await s.execute(sa.select(models.customers).where(c.customer_id == customer))
    # A score counts only with a history, as the API reads it (a fully refunded
    # customer's row stays behind for its published count).
    score = (
        await s.execute(
            sa.select(models.scores)
            .join(models.customers, c.customer_id == sc.customer_id)
            .where(sc.customer_id == customer)
        )
    ).first()
    return {
        "orders": [tuple(r) for r in orders],
        "history": [tuple(r)[1:] for r in history],
        "score": None
        if score is None
        else (
            [pytest.approx(getattr(score, k), rel=1e-9) for k in SCORE_COLUMNS],
            score.model,
            score.model_version,
            score.as_of,
        ),
    }


async def _published(s: AsyncSession, customer: str) -> list[dict[str, Any]]:
    rows = await s.execute(
        sa.select(models.outbox.c.value)
        .where(models.outbox.c.key == customer.encode())
        .order_by(models.outbox.c.id)
    )
    return [json.loads(v) for (v,) in rows]


_settings = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_settings
@given(
    orders=st.lists(_order, max_size=4),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(1, 12)),
)
async def test_a_merged_customer_is_scored_as_if_one_id_had_been_used_throughout(
    sessions: Any, orders: list[Any], order: Any, cuts: list[int]
) -> None:
    u = uuid.uuid4().hex[:8]
    anon, known, reference = f"{TAG}anon-{u}", f"{TAG}known-{u}", f"{TAG}ref-{u}"
    scorer = _scorer(f"t{u}.")
    events = _story(anon, known, orders)
    # The reference: the same events, every one under the known id, in one batch.
    # (Its link names an anonymous id of its own, with no events.)
    same = [{**e, "subject": reference} for e in events]
    for e in same:
        if e["type"] == "identity.linked":
            e["data"] = {"anonymous_id": f"{TAG}ref-anon-{u}"}
    await _consume(scorer, sessions, f"ref-{u}", same)
    # Shuffled, one replayed, split into batches at random points.
    arrivals = [*events, events[order.randrange(len(events))]]
    order.shuffle(arrivals)
    bounds = sorted({c % len(arrivals) for c in cuts} | {0, len(arrivals)})
    for lo, hi in itertools.pairwise(bounds):
        await _consume(scorer, sessions, f"g-{u}", arrivals[lo:hi])

    async with sessions() as s:
        merged = await _state(s, known)
        assert merged == await _state(s, reference)
        assert await _state(s, anon) == {"orders": [], "history": [], "score": None}
        assert await repository.links_of(s, [anon, known]) == {anon: known}
        # What consumers were last told of the customer is their score, within the
        # publishing thresholds, and the event ids count up without a gap.
        row = (await repository.to_score(s, [known]) or [None])[0]
        published = await _published(s, known)
        assert [e["id"] for e in published] == [
            score_event_id(known, n) for n in range(1, len(published) + 1)
        ]
        if merged["score"] is not None:
            assert row is not None and published
            last = published[-1]["data"]
            told = Published(last["churn_probability"], float(last["clv"]), last["model"])
            churn, clv = merged["score"][0][1].expected, merged["score"][0][4].expected
            assert not material(scorer.rule, told, churn, clv, merged["score"][1])


async def test_a_customer_refunded_in_full_who_buys_again_gets_a_new_score_event_id(
    sessions: Any,
) -> None:
    """Refunded in full, the customer has no history; buying again must not restart the
    score event count, or the new score's id repeats the first one and consumers drop it."""
    u = uuid.uuid4().hex[:8]
    who, scorer = f"{TAG}refunded-{u}", _scorer(f"t{u}.")
    buy = _event(who, "b1", "purchase.completed", 1, order_id="o1", amount="40.00")
    back = _event(who, "r1", "purchase.refunded", 2, order_id="o1", amount="40.00")
    again = _event(who, "b2", "purchase.completed", 3, order_id="o2", amount="25.00")
    for e in (buy, back, again):
        e["data"]["currency"] = "EUR"
        await _consume(scorer, sessions, u, [e])
    async with sessions() as s:
        ids = [e["id"] for e in await _published(s, who)]
    assert len(ids) >= 2 and len(set(ids)) == len(ids), ids
    assert ids == [score_event_id(who, n) for n in range(1, len(ids) + 1)]


async def test_an_anonymous_purchase_racing_its_link_is_not_left_behind(sessions: Any) -> None:
    """The visitor's purchase and the link, handled at the same moment in two
    transactions (two replicas): the purchase ends with the customer every time."""
    scorer = _scorer("race.")
    for n in range(12):
        u = uuid.uuid4().hex[:8]
        anon, known = f"{TAG}race-anon-{u}", f"{TAG}race-known-{u}"
        buy = _event(anon, f"b-{u}", "purchase.completed", 1, order_id="o", amount="9")
        buy["data"]["currency"] = "EUR"
        link = _event(known, f"l-{u}", "identity.linked", 2, anonymous_id=anon)
        # Alternate which transaction starts first.
        first, second = ([buy], [link]) if n % 2 else ([link], [buy])
        await asyncio.gather(
            _consume(scorer, sessions, f"a-{u}", first),
            _consume(scorer, sessions, f"b-{u}", second),
        )
        async with sessions() as s:
            assert (await _state(s, anon))["orders"] == []
            state = await _state(s, known)
            assert [o[0] for o in state["orders"]] == ["o"] and state["score"] is not None


async def _poll(check: Any, what: str, timeout: float = 30.0) -> Any:
    for _ in range(int(timeout / 0.2)):
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _merges(outcome: str) -> float:
    value = REGISTRY.get_sample_value("clm_scoring_identity_merges_total", {"outcome": outcome})
    return value or 0.0


async def test_a_second_customer_for_the_same_anonymous_id_is_refused_and_counted(
    sessions: Any,
) -> None:
    u = uuid.uuid4().hex[:8]
    anon, first, second = f"{TAG}anon-{u}", f"{TAG}first-{u}", f"{TAG}second-{u}"
    scorer = _scorer(f"t{u}.")
    before = {k: _merges(k) for k in ("merged", "linked", "refused")}
    buy = _event(anon, "b1", "purchase.completed", 1, order_id="o1", amount="9", currency="EUR")
    await _consume(scorer, sessions, u, [buy])
    await _consume(
        scorer, sessions, u, [_event(first, "l1", "identity.linked", 2, anonymous_id=anon)]
    )
    await _consume(
        scorer, sessions, u, [_event(second, "l2", "identity.linked", 3, anonymous_id=anon)]
    )
    later = _event(anon, "b2", "purchase.completed", 9, order_id="o2", amount="5", currency="EUR")
    await _consume(scorer, sessions, u, [later])
    async with sessions() as s:
        assert await repository.links_of(s, [anon]) == {anon: first}
        assert [o[0] for o in (await _state(s, first))["orders"]] == ["o1", "o2"]
        assert await _state(s, second) == {"orders": [], "history": [], "score": None}
    after = {k: _merges(k) - before[k] for k in before}
    assert after == {"merged": 1, "linked": 0, "refused": 1}


async def test_a_merged_anonymous_id_answers_with_its_customer_s_score(
    own_database: str, bootstrap_servers: str
) -> None:
    """Through the broker: guest purchases on the purchase topic, then a page view and the
    link on the web topic; the anonymous id's score is then the customer's."""
    key = await make_key(own_database, "read")
    u = uuid.uuid4().hex[:8]
    anon, known = f"{TAG}anon-{u}", f"{TAG}known-{u}"
    now = datetime.now(UTC)
    async with running("clm_scoring", own_database, bootstrap_servers) as (client, runtime):
        topics = runtime.topics
        guest = [
            purchase(anon, f"g{n}-{u}", "30.00", time=(now - timedelta(days=d)).isoformat())
            for n, d in enumerate((40, 20))
        ]
        await produce(bootstrap_servers, topics.domain("purchase.completed"), guest)

        async def scored(customer: str) -> dict[str, Any] | None:
            r = await client.get(f"/v1/customers/{customer}/score", headers=bearer(key))
            return r.json() if r.status_code == 200 else None

        await _poll(lambda: scored(anon), f"{anon}'s score")
        own = purchase(known, f"k-{u}", "50.00", time=(now - timedelta(days=5)).isoformat())
        await produce(bootstrap_servers, topics.domain("purchase.completed"), [own])
        web = [
            _event(anon, f"pv-{u}", "web.page_viewed", 0, url="/"),
            _event(known, f"link-{u}", "identity.linked", 1, anonymous_id=anon),
        ]
        await produce(bootstrap_servers, topics.domain("identity.linked"), web)

        async def merged() -> dict[str, Any] | None:
            body = await scored(anon)
            if body and body["customer_id"] == known and body["summary"]["repeat_purchases"] == 2:
                return body
            return None

        body = await _poll(merged, f"{anon} to answer as {known}")
        direct = await scored(known)
        metrics = (await client.get("/metrics")).text

    assert body["requested_id"] == anon
    assert direct is not None and "requested_id" not in direct
    assert {k: v for k, v in body.items() if k != "requested_id"} == direct
    assert 'clm_scoring_identity_merges_total{outcome="merged"}' in metrics
