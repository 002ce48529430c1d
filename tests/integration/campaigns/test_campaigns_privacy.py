"""Erasure and export of a customer (`privacy.erasure_requested`), against the real broker
and database: the projection goes, the person's actions stay as anonymous rows so trigger
stats and uplift keep their counts, an unsent action is never sent, a replay leaves
nothing, and writers outside the consumer runner (the dispatcher, enrolment) neither
interleave with an erasure nor write the person back."""

from __future__ import annotations

import asyncio
import json
import uuid
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
from kit import bearer, read_topic, running
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from clm_campaigns.channels import Outcome
from clm_campaigns.dispatcher import Dispatcher
from clm_campaigns.repository import Claimed
from clm_events.envelope import encode_structured, new_event

PAYLOAD = (
    '{"email": {{ customer.traits.email | tojson }}, "to": {{ customer.traits.name | tojson }}}'
)


def personal(url: str, to_stage: str = "at_risk", **extra: Any) -> dict[str, Any]:
    """A webhook trigger whose payload carries the customer's email and name."""
    body = webhook_trigger(url, to_stage, **extra)
    body["action"]["payload"] = PAYLOAD
    return body


async def held(engine: AsyncEngine, *needles: str) -> list[str]:
    """Rows of any table of the campaigns schema that contain one of `needles`, read as
    pg_dump would (every row as text; bytea columns as hex, so searched as hex too)."""
    async with engine.connect() as conn:
        tables = await conn.scalars(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'campaigns'")
        )
        found = []
        for table in tables.all():
            rows = await conn.scalars(sa.text(f"SELECT t::text FROM campaigns.{table} AS t"))
            for row in rows:
                if any(n in row or n.encode().hex() in row for n in needles):
                    found.append(f"{table}: {row[:300]}")
    return found


def erasure_request(*ids: str) -> tuple[str, bytes]:
    request_id = f"era_{uuid.uuid4().hex}"
    value = encode_structured(
        new_event(
            "privacy.erasure_requested",
            id=request_id,
            source="clm/ingest",
            subject=ids[0],
            data={"request_id": request_id, "customer_ids": list(ids)},
        )
    )
    return request_id, value


async def erase(bootstrap: str, rt: Any, *ids: str) -> dict[str, int]:
    """Request an erasure and wait for campaigns' completion; its counts."""
    request_id, value = erasure_request(*ids)
    await publish(bootstrap, rt.topics.privacy, ids[0], value)

    async def completed() -> dict[str, int] | None:
        for record in await read_topic(bootstrap, rt.topics.privacy, expect=1, timeout=1.0):
            body = json.loads(record.value)
            if body["type"] == "privacy.erasure_completed" and body["subject"] == request_id:
                assert record.key == request_id.encode()  # not the person's id
                assert body["data"]["service"] == "campaigns"
                erased: dict[str, int] = body["data"]["erased"]
                return erased
        return None

    result: dict[str, int] = await eventually(completed, timeout=30, what="erasure completed")
    return result


async def stats(client: httpx.AsyncClient, key: str, trigger: str) -> dict[str, Any]:
    r = await client.get(f"/v1/triggers/{trigger}/stats", headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def series_totals(client: httpx.AsyncClient, key: str, trigger: str) -> dict[str, int]:
    r = await client.get(
        f"/v1/triggers/{trigger}/stats/series", params={"bucket": "hour"}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    return {k: sum(p[k] for p in points) for k in points[0] if k != "at"}


async def export(client: httpx.AsyncClient, key: str, customer: str) -> dict[str, Any]:
    r = await client.get(f"/v1/privacy/customers/{customer}", headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def create(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> str:
    r = await client.post("/v1/triggers", json=body, headers=bearer(key))
    assert r.status_code == 201, r.text
    trigger_id: str = r.json()["id"]
    return trigger_id


async def identify(bootstrap: str, rt: Any, customer: str, email: str, name: str) -> None:
    await publish(
        bootstrap,
        rt.topics.domain("web.identified"),
        customer,
        event(customer, "web.identified", {"traits": {"email": email, "name": name}}),
    )


async def test_an_erased_customer_leaves_only_anonymous_actions_and_the_stats_keep_their_counts(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    admin_key: str,
    read_key: str,
) -> None:
    ada, visitor, bob = cid(), f"anon-{uuid.uuid4().hex[:10]}", cid()
    email, name = f"{ada}@example.com", f"Ada {uuid.uuid4().hex[:8]}"
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        now = await create(
            client,
            admin_key,
            personal(receiver.url, conversion_window_seconds=3600),
        )
        later = await create(client, admin_key, personal(receiver.url, delay_seconds=3600))
        # The visitor shares Ada's email: a search by it finds both ids.
        await identify(bootstrap_servers, rt, ada, email, name)
        await identify(bootstrap_servers, rt, visitor, email.upper(), name)
        await identify(bootstrap_servers, rt, bob, f"{bob}@example.com", "Bob")
        for c in (ada, visitor, bob):
            await projected(engine, c)
        for c in (ada, bob):
            await publish(bootstrap_servers, rt.topics.transitions, c, transition(c, "at_risk"))

        async def both_delivered() -> bool:
            rows = await actions(client, read_key, trigger_id=now, status="delivered")
            return len(rows) == 2

        await eventually(both_delivered, what="both webhooks delivered")
        purchase = {"order_id": f"o-{ada}", "amount": "20.00", "currency": "EUR"}
        await publish(
            bootstrap_servers,
            rt.topics.domain("purchase.completed"),
            ada,
            event(ada, "purchase.completed", purchase),
        )

        async def converted() -> dict[str, Any] | None:
            s = await stats(client, read_key, now)
            return s if s["conversions"]["treated"]["converted"] == 1 else None

        before_now = await eventually(converted, what="Ada's conversion")
        before_later = await stats(client, read_key, later)
        series_before = await series_totals(client, read_key, now)
        assert before_later["fired"] == 2 and before_later["in_flight"] == 2

        # An admin key resolves the email to every id that has it, as ingest asks.
        found = await client.get(
            "/v1/customers", params={"email": email, "limit": 100}, headers=bearer(admin_key)
        )
        assert found.status_code == 200, found.text
        assert sorted(c["customer_id"] for c in found.json()["customers"]) == sorted([ada, visitor])
        assert found.json()["truncated"] is False
        one = await client.get(
            "/v1/customers", params={"email": email, "limit": 1}, headers=bearer(admin_key)
        )
        assert len(one.json()["customers"]) == 1 and one.json()["truncated"] is True

        # The export shows the projection and every action, rendered.
        mine = await export(client, admin_key, ada)
        assert mine["service"] == "campaigns" and mine["found"] is True
        assert mine["customer"]["traits"] == {"email": email, "name": name}
        assert mine["customer"]["stage"] == "at_risk"
        assert mine["customer"]["recent_purchases"][0]["order_id"] == f"o-{ada}"
        assert sorted(a["status"] for a in mine["actions"]) == ["delivered", "pending"]
        assert all(email in a["payload"] and a["target"]["url"] for a in mine["actions"])
        reader = await client.get(f"/v1/privacy/customers/{ada}", headers=bearer(read_key))
        assert reader.status_code == 403

        counts = await erase(bootstrap_servers, rt, ada, visitor)
        assert counts["customers"] == 2 and counts["actions"] == 2
        assert counts["outbox"] >= 1  # Ada's campaign.action_fired

        # Nothing names Ada any more; her actions are anonymous rows, the pending one
        # suppressed as erased (never sent).
        assert await held(engine, ada, visitor, email, email.upper(), name) == []
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT trigger_id, status, suppressed_reason, target, payload, "
                        "cause_event, entry_key, converted_at IS NOT NULL AS converted "
                        "FROM campaigns.actions WHERE customer_id = '' AND trigger_id IN "
                        "(:a, :b) ORDER BY trigger_id = :a"
                    ),
                    {"a": now, "b": later},
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            (later, "suppressed", "erased", {}, None, "", None, False),
            (now, "delivered", None, {}, None, "", None, True),
        ]
        assert await stats(client, read_key, now) == before_now
        assert await series_totals(client, read_key, now) == series_before
        after_later = await stats(client, read_key, later)
        assert after_later["matched"] == 2 and after_later["in_flight"] == 1
        assert after_later["suppressed"] == {"total": 1, "by_reason": {"erased": 1}}
        assert await export(client, admin_key, ada) == {
            "service": "campaigns",
            "customer_id": ada,
            "found": False,
            "customer": None,
            "actions": [],
            "segments": [],
        }
        gone = await client.get("/v1/customers", params={"email": email}, headers=bearer(read_key))
        assert gone.json() == {"customers": [], "truncated": False}
        nobody = await client.get(
            "/v1/actions", params={"customer_id": ""}, headers=bearer(read_key)
        )
        assert nobody.status_code == 422  # '' is no customer: no listing matches it

        # Bob is untouched: his projection, his delivered and pending actions.
        theirs = await export(client, admin_key, bob)
        assert theirs["customer"]["traits"]["name"] == "Bob"
        assert sorted(a["status"] for a in theirs["actions"]) == ["delivered", "pending"]
        assert all(f"{bob}@example.com" in a["payload"] for a in theirs["actions"])

        # A replay of Ada's events is dropped on arrival: it leaves nothing behind.
        replay = [
            (rt.topics.domain("web.identified"), f"e-{uuid.uuid4().hex}", "web.identified"),
            (rt.topics.transitions, f"tr-{uuid.uuid4().hex}", "lifecycle.stage_changed"),
        ]
        await publish(
            bootstrap_servers,
            replay[0][0],
            ada,
            encode_structured(
                new_event(
                    "web.identified",
                    id=replay[0][1],
                    source="test",
                    subject=ada,
                    data={"traits": {"email": email, "name": name}},
                )
            ),
        )
        await publish(
            bootstrap_servers,
            replay[1][0],
            ada,
            transition(ada, "at_risk", event_id=replay[1][1]),
        )

        async def consumed() -> bool:
            async with engine.connect() as conn:
                n = await conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM campaigns.processed_events WHERE event_id = ANY(:ids)"
                    ),
                    {"ids": [r[1] for r in replay]},
                )
            return n == 2

        await eventually(consumed, what="the replay consumed")
        assert await held(engine, ada, visitor, email, name) == []
        assert (await stats(client, read_key, now))["matched"] == 2

        # A second request for the same ids completes too, with nothing left to erase.
        again = await erase(bootstrap_servers, rt, ada, visitor)
        assert again == {"customers": 0, "actions": 0, "outbox": 0}
    assert len(receiver.received) == 2  # Ada's pending action was never sent


async def test_an_action_in_flight_when_its_customer_is_erased_writes_nothing_of_them_back(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    admin_key: str,
    read_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claimed before the erasure, finished after it: the one that was sent is delivered,
    anonymously; the one whose send failed stays suppressed as erased, without the error
    (which named the target); neither is announced under the person's id."""
    sent, failed = cid(), cid()
    gate = asyncio.Event()
    deliver = Dispatcher._deliver

    async def in_flight(self: Dispatcher, c: Claimed) -> Outcome:
        await gate.wait()
        if c.customer_id == failed:
            return Outcome(False, f"HTTP 503 from {c.target['url']} for {c.payload}")
        return await deliver(self, c)

    monkeypatch.setattr(Dispatcher, "_deliver", in_flight)
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        trigger = await create(client, admin_key, personal(receiver.url))
        for c in (sent, failed):
            await identify(bootstrap_servers, rt, c, f"{c}@example.com", f"Name {c}")
            await projected(engine, c)
            await publish(bootstrap_servers, rt.topics.transitions, c, transition(c, "at_risk"))

        async def claimed() -> bool:
            rows = await actions(client, read_key, trigger_id=trigger, status="sending")
            return len(rows) == 2

        await eventually(claimed, what="both actions claimed")
        counts = await erase(bootstrap_servers, rt, sent, failed)
        assert counts["actions"] == 2
        gate.set()

        async def recorded() -> list[Any] | None:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.text(
                            "SELECT status, suppressed_reason, last_error, target, payload, "
                            "delivered_at IS NOT NULL AS delivered "
                            "FROM campaigns.actions WHERE trigger_id = :t ORDER BY status"
                        ),
                        {"t": trigger},
                    )
                ).all()
            return [tuple(r) for r in rows] if any(r.delivered for r in rows) else None

        rows = await eventually(recorded, what="the sent action recorded")
        await asyncio.sleep(0.5)  # the failed one's outcome, recorded in the same pass
        assert (
            await recorded()
            == rows
            == [
                ("delivered", None, None, {}, None, True),
                ("suppressed", "erased", None, {}, None, False),
            ]
        )
        assert await held(engine, sent, failed) == []
    assert len(receiver.received) == 1


async def test_enrolment_waits_for_an_erasure_in_progress(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    admin_key: str,
) -> None:
    """Enrolment writes customers' actions outside the consumer runner: it takes the
    erasure guard first, so it cannot act on a customer an erasure is removing."""
    customer = cid()
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        await publish(
            bootstrap_servers, rt.topics.transitions, customer, transition(customer, "won_back")
        )
        await projected(engine, customer)
        # Matching no one: the test is about when enrolment runs, not whom it contacts.
        body = webhook_trigger(receiver.url, "won_back", condition="false")
        trigger = await create(client, admin_key, body)
        async with async_sessionmaker(engine)() as session, session.begin():
            await rt.tombstones.bury(session, [customer])  # the erasure lock, held
            await session.execute(
                sa.text("DELETE FROM campaigns.customers WHERE customer_id = :c"), {"c": customer}
            )
            enrolment = asyncio.create_task(
                client.post(
                    f"/v1/triggers/{trigger}/enroll",
                    params={"limit": 5000},
                    headers=bearer(admin_key),
                )
            )
            await asyncio.sleep(0.5)
            assert not enrolment.done()
        r = await enrolment
        assert r.status_code == 200, r.text
    assert await held(engine, customer) == []
