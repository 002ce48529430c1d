"""Privacy erasure and export in scoring, against the real broker and database: an erasure
request leaves nothing of the customer or their linked visitor in any table of the schema,
the model versions (aggregates) stay, events of the erased ids arriving afterwards leave
nothing, a second request completes too, and a rescore racing an erasure never writes the
customer back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from kit import bearer, fresh_database, make_key, produce, purchase, read_topic, running, until
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_events.envelope import (
    PrivacyErasureCompletedEvent,
    PrivacyErasureRequestedEvent,
    decode_kafka_record,
    encode_structured,
    new_event,
)
from clm_events.privacy import Tombstones, erase_customers
from clm_events.settings import ClmSettings
from clm_events.topics import Topics
from clm_scoring import models, repository
from clm_scoring.config import Settings
from clm_scoring.domain.summary import Order, history
from clm_scoring.jobs import Jobs, Scorer
from clm_scoring.models import SCHEMA


@pytest.fixture
async def own(database_url: str) -> AsyncIterator[str]:
    """A database of its own: a rescore and its churn distribution are over everyone."""
    async with fresh_database(database_url) as url:
        yield url


async def holding(url: str, *needles: str) -> list[tuple[str, str]]:
    """(table, row) of every row of every table of the schema whose text, or whose bytes
    (the outbox's key and value are bytea, shown in hex), contain one of the needles: what
    a dump of the schema would show of the person."""
    patterns = [f"%{n}%" for n in needles] + [f"%{n.encode().hex()}%" for n in needles]
    engine = create_async_engine(url)
    found: list[tuple[str, str]] = []
    try:
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
                    {"patterns": patterns},
                )
                found += [(table, row) for row in rows]
    finally:
        await engine.dispose()
    return found


def _bought(customer: str, order: str, days_ago: int, amount: str) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    return purchase(customer, order, amount, time=at.isoformat())


def _link(customer: str, anonymous: str, eid: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": "web/app",
        "type": "identity.linked",
        "subject": customer,
        "time": datetime.now(UTC).isoformat(),
        "data": {"anonymous_id": anonymous},
    }


def _story(u: str) -> tuple[str, str, str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Kay buys as a guest (the visitor id), signs in (the link), buys twice more and has
    part of an order refunded; Olu buys once. (kay, visitor, olu, purchase topic, web)."""
    kay, anon, olu = f"kay-{u}", f"anon-{u}", f"olu-{u}"
    refund = {
        **_bought(kay, f"k1-{u}", 19, "5.00"),
        "id": f"refund-k1-{u}",
        "type": "purchase.refunded",
    }
    purchases = [
        _bought(anon, f"g-{u}", 40, "30.00"),
        _bought(kay, f"k1-{u}", 20, "25.00"),
        _bought(kay, f"k2-{u}", 5, "45.50"),
        refund,
        _bought(olu, f"o1-{u}", 10, "60.00"),
    ]
    return kay, anon, olu, purchases, [_link(kay, anon, f"link-{u}")]


async def _publish(runtime: Any, bootstrap: str, purchases: Any, web: Any) -> None:
    await produce(bootstrap, runtime.topics.domain("purchase.completed"), purchases)
    await produce(bootstrap, runtime.topics.domain("identity.linked"), web)


async def _scored(client: httpx.AsyncClient, read: str, customer: str, repeat: int) -> None:
    """Until the customer's score counts `repeat` repeat purchases (merges included)."""

    async def check() -> bool:
        r = await client.get(f"/v1/customers/{customer}/score", headers=bearer(read))
        return r.status_code == 200 and r.json()["summary"]["repeat_purchases"] == repeat

    await until(check, f"{customer}'s score with {repeat} repeat purchases", timeout=30)


async def _export(client: httpx.AsyncClient, admin: str, customer: str) -> Any:
    r = await client.get(f"/v1/privacy/customers/{customer}", headers=bearer(admin))
    assert r.status_code == 200, r.text
    return r.json()


async def _erase(bootstrap: str, runtime: Any, ids: list[str]) -> dict[str, int]:
    """Request the erasure as ingest does and wait for scoring's completion; its counts."""
    request_id = f"req-{uuid.uuid4().hex}"
    event = new_event(
        "privacy.erasure_requested",
        id=request_id,
        source="clm/ingest",
        subject=ids[0],
        data={"request_id": request_id, "customer_ids": ids},
    )
    topic = runtime.topics.privacy
    await produce(bootstrap, topic, [encode_structured(event)], key=lambda _: ids[0].encode())

    async def completed() -> dict[str, int] | None:
        for r in await read_topic(bootstrap, topic, expect=1, timeout=1):
            e = decode_kafka_record(r.headers, r.value)
            if isinstance(e, PrivacyErasureCompletedEvent) and e.data.request_id == request_id:
                assert (e.data.service, e.subject, r.key) == (
                    "scoring",
                    request_id,
                    request_id.encode(),
                )  # the answer names no customer
                return dict(e.data.erased)
        return None

    counts: dict[str, int] = await until(completed, f"completion of {request_id}", timeout=30)
    return counts


def _by_churn() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "clm_scoring_customers_by_churn_probability",
            {"bucket": f"{b / 10:.1f}-{(b + 1) / 10:.1f}"},
        )
        or 0.0
        for b in range(10)
    )


async def test_an_erasure_leaves_nothing_of_the_customer_and_the_model_stays(
    own: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:8]
    kay, anon, olu, purchases, web = _story(u)
    admin, read = await make_key(own, "admin"), await make_key(own, "read")
    async with running("clm_scoring", own, bootstrap_servers) as (client, runtime):
        await _publish(runtime, bootstrap_servers, purchases, web)
        await _scored(client, read, kay, 2)  # the guest order merged in
        await _scored(client, read, olu, 0)
        refit = await client.post("/v1/model/refit", headers=bearer(admin))
        assert refit.status_code == 200, refit.text
        before = {c: await _export(client, admin, c) for c in (kay, anon, olu)}
        assert await holding(own, kay, anon)

        erased = await _erase(bootstrap_servers, runtime, [kay, anon])

        after = {c: await _export(client, admin, c) for c in (kay, anon, olu)}
        model = (await client.get("/v1/model", headers=bearer(read))).json()
        gone = await client.get(f"/v1/customers/{kay}/score", headers=bearer(read))
        jobs: Jobs = client._transport.app.state.jobs  # type: ignore[attr-defined]
        scored, _ = await jobs.rescore_all()
        left = await holding(own, kay, anon)

    # (d) The export showed everything scoring held, readable; an anonymous id, its link.
    k = before[kay]
    assert (k["service"], k["customer_id"], k["found"]) == ("scoring", kay, True)
    day = {e["data"]["order_id"]: e["time"][:10] for e in purchases if e["id"].startswith("ord-")}
    assert k["orders"] == [
        {"order_id": o, "purchased_on": day[o], "amount": amount, "refunded": refunded}
        for o, amount, refunded in (
            (f"g-{u}", "30.00", "0"),
            (f"k1-{u}", "25.00", "5.00"),
            (f"k2-{u}", "45.50", "0"),
        )
    ]
    assert k["summary"]["purchase_days"] == 3
    assert Decimal(k["summary"]["first_spend"]) + Decimal(k["summary"]["repeat_spend"]) == Decimal(
        "95.50"
    )
    assert 0 <= k["score"]["churn_probability"] <= 1 and k["score"]["published_count"] >= 1
    assert [(x["anonymous_id"], x["customer_id"]) for x in k["linked_ids"]] == [(anon, kay)]
    assert before[anon]["found"] is True and before[anon]["orders"] == []
    assert before[anon]["linked_ids"] == k["linked_ids"]
    # The refit computed RFM cut points: the segment changes are the customer's too.
    assert k["rfm_moves"] and k["rfm_moves"][-1]["to_segment"] == k["score"]["rfm_segment"]

    # (a) Nothing of either id in any table; the completion counts what went.
    assert left == []
    assert {t: n for t, n in erased.items() if t not in ("outbox", "rfm_moves")} == {
        "customers": 1,
        "scores": 1,
        "orders": 3,
        "identity_links": 1,
    }
    assert erased["rfm_moves"] == len(k["rfm_moves"])
    assert erased["outbox"] >= 1  # the customer's published scores, at least the first
    for c in (kay, anon):
        assert after[c] == {
            "service": "scoring",
            "customer_id": c,
            "found": False,
            "orders": [],
            "summary": None,
            "score": None,
            "linked_ids": [],
            "rfm_moves": [],
        }
    assert gone.status_code == 404

    # (c) Olu is untouched; the model version (an aggregate) stays as fitted; the next
    # rescore and its churn distribution count Olu alone.
    assert after[olu] == before[olu] and after[olu]["found"] is True
    assert model["version"] == refit.json()["version"] and model["fit"]["customers"] == 2
    assert scored == 1 and _by_churn() == 1


def _dropped(group: str, topic: str) -> float:
    labels = {"group": group, "topic": topic}
    return REGISTRY.get_sample_value("clm_privacy_dropped_events_total", labels) or 0.0


async def test_events_of_erased_ids_arriving_later_leave_nothing_and_a_second_request_completes(
    migrated: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:8]
    kay, anon, olu, purchases, web = _story(u)
    admin, read = await make_key(migrated, "admin"), await make_key(migrated, "read")
    async with running("clm_scoring", migrated, bootstrap_servers) as (client, runtime):
        await _publish(runtime, bootstrap_servers, purchases, web)
        await _scored(client, read, kay, 2)
        await _erase(bootstrap_servers, runtime, [kay, anon])

        # (b) The same events again (duplicates), then new ones for either id; a link by
        # another customer naming the erased visitor, then one naming a fresh visitor.
        group = runtime.consumers[0].group_id
        shop, site = (runtime.topics.domain(t) for t in ("purchase.completed", "identity.linked"))
        dropped = _dropped(group, shop), _dropped(group, site)
        later = [
            _bought(kay, f"k3-{u}", 1, "12.00"),
            _bought(anon, f"g2-{u}", 1, "8.00"),
            {**_bought(kay, f"k2-{u}", 0, "5.00"), "id": f"rf2-{u}", "type": "purchase.refunded"},
        ]
        other = f"visitor-{u}"
        links = [
            _link(kay, anon, f"link2-{u}"),
            _link(olu, anon, f"link3-{u}"),
            _link(olu, other, f"link4-{u}"),
        ]
        await _publish(runtime, bootstrap_servers, purchases + later, web + links)

        async def all_dropped() -> bool:
            return (_dropped(group, shop) - dropped[0], _dropped(group, site) - dropped[1]) == (
                3,
                1,
            )

        await until(all_dropped, "the later events of the erased ids dropped", timeout=30)

        async def linked() -> Any:
            return (await _export(client, admin, other))["linked_ids"]

        assert [x["customer_id"] for x in await until(linked, f"{other}'s link")] == [olu]
        left = await holding(migrated, kay, anon)

        # (e) Erasing the same ids again completes, with nothing left to erase.
        again = await _erase(bootstrap_servers, runtime, [kay, anon])
        # Olu too: refits in other tests fit on every customer of this database.
        await _erase(bootstrap_servers, runtime, [olu, other])

    assert left == []
    assert again == {
        "customers": 0,
        "scores": 0,
        "orders": 0,
        "identity_links": 0,
        "rfm_moves": 0,
        "outbox": 0,
    }


async def test_a_rescore_racing_an_erasure_never_writes_the_customer_back(own: str) -> None:
    """The scheduled rescore, in small pages, and erasures of customers it is rescoring,
    started in either order: the erased customers hold nothing afterwards. (No broker: the
    erasure step is run as the consumer runner runs it.)"""
    engine = create_async_engine(own)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    tombstones = Tombstones(models.privacy_tombstones, b"race", timedelta(days=1))
    topics = Topics(prefix="race.")
    settings = Settings(rescore_page_size=3, common=ClmSettings(database_url=own))
    jobs = Jobs(Scorer(settings, topics), sessions, tombstones)
    u = uuid.uuid4().hex[:8]
    people = [f"race-{u}-{n:02d}" for n in range(24)]
    day = date.today() - timedelta(days=30)
    async with sessions() as s, s.begin():
        orders = {(c, "o1"): (day, Decimal(20)) for c in people}
        await repository.record_purchases(s, orders)
        hist = history([Order(day, Decimal(20), Decimal(0))])
        await repository.save_histories(s, dict.fromkeys(people, hist))

    async def erase(ids: list[str]) -> None:
        rid = f"race-req-{uuid.uuid4().hex}"
        event = new_event(
            "privacy.erasure_requested",
            id=rid,
            source="clm/ingest",
            subject=ids[0],
            data={"request_id": rid, "customer_ids": ids},
        )
        assert isinstance(event, PrivacyErasureRequestedEvent)
        async with sessions() as s, s.begin():
            await tombstones.guard(s)  # as the consumer runner does before its handler
            await erase_customers(
                s,
                event,
                service="scoring",
                tombstones=tombstones,
                outbox=models.outbox,
                topic=topics.privacy,
                erase=repository.erase,
            )

    try:
        for n, victim in enumerate(people[::3]):
            work = [jobs.rescore_all(), erase([victim])]
            await asyncio.gather(*(work if n % 2 else work[::-1]))
            assert await holding(own, victim) == [], victim
        async with sessions() as s:
            left = await s.scalar(
                sa.select(sa.func.count())
                .select_from(models.scores)
                .where(models.scores.c.customer_id.like(f"race-{u}-%"))
            )
        assert left == len(people) - len(people[::3])  # everyone else is still scored
    finally:
        await engine.dispose()
