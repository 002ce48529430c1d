"""Ingest's side of an erasure: the request is resolved (the customer and every anonymous
id linked to it), audited without PII and sent to every service on the privacy topic;
ingest erases its dead letters and identity links, records each service's completion,
and afterwards keeps no trace of the person from replayed links or dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from ingestkit import events_with_ids
from kit import bearer, fresh_database, make_key, pg_dump, produce, running, traces, until

from clm_events.envelope import encode_structured
from clm_events.privacy import completed_event


def _link(customer: str, anonymous_id: str, event_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "web/app",
        "type": "identity.linked",
        "subject": customer,
        "time": datetime.now(UTC).isoformat(),
        "data": {"anonymous_id": anonymous_id},
    }


def _broken(customer: str, marker: str) -> bytes:
    """An invalid event (no data) for the customer: the gate dead-letters it."""
    return json.dumps({"id": marker, "subject": customer, "type": "purchase.completed"}).encode()


async def _rows_naming(database_url: str, text: str) -> list[str]:
    """The lines of a dump of the ingest schema that hold `text` (in any encoding)."""
    return traces(await asyncio.to_thread(pg_dump, database_url, schema="ingest"), text)


async def test_an_erasure_erases_ingest_part_audits_it_and_leaves_nothing_on_replay(
    migrated: str, bootstrap_servers: str
) -> None:
    # A database of its own: dead letters are stored by their place on the dead-letter
    # topic, and other tests' topics start at the same offsets.
    async with fresh_database(migrated) as db:
        await _erasure_scenario(db, bootstrap_servers)


async def _erasure_scenario(migrated: str, bootstrap_servers: str) -> None:
    run = uuid.uuid4().hex[:8]
    customer, anon, other = f"era-{run}", f"anon-{run}", f"kept-{run}"
    admin = bearer(await make_key(migrated, "admin"))
    shop = bearer(await make_key(migrated, "source", "web"))
    async with running("clm_ingest", migrated, bootstrap_servers) as (client, rt):
        r = await client.post("/v1/events", json=_link(customer, anon, f"{run}-link"), headers=shop)
        assert r.status_code == 202, r.text
        inbound = rt.topics.inbound
        await produce(bootstrap_servers, inbound, [_broken(customer, f"{run}-dl")],
                      key=lambda _: customer.encode())  # fmt: skip
        await produce(bootstrap_servers, inbound, [_broken(other, f"{run}-kept")],
                      key=lambda _: other.encode())  # fmt: skip

        async def stored() -> bool:
            return len(await _rows_naming(migrated, f"{run}-")) >= 3  # link, 2 dead letters

        await until(stored, "the link and both dead letters stored")

        r = await client.post(
            "/v1/privacy/erasures", json={"customer_id": anon}, headers=admin
        )  # the anonymous id stands for its customer
        assert r.status_code == 202, r.text
        request = r.json()
        assert request["customer_ids"] == [customer, anon]
        assert request["status"] == "pending" and request["selector"] == "customer_id"
        request_id = request["request_id"]

        [sent] = await events_with_ids(bootstrap_servers, rt.topics.privacy, [request_id])
        assert (sent["type"], sent["subject"]) == ("privacy.erasure_requested", customer)
        assert sent["data"]["customer_ids"] == [customer, anon]

        async def ingest_done() -> Any:
            body = (await client.get(f"/v1/privacy/erasures/{request_id}", headers=admin)).json()
            return body if body["services"]["ingest"] else None

        status = await until(ingest_done, "ingest's completion recorded")
        assert status["status"] == "pending"  # the other services have not answered
        assert status["services"]["ingest"]["erased"] == {
            "deadletters": 1,
            "identities": 1,
            "outbox": 1,  # the request itself: published, but it names the customer
        }
        assert status["ids"] == 2 and "customer_ids" not in status
        # Nothing in ingest names the person any more, the audit row included.
        for needle in (customer, anon):
            assert await _rows_naming(migrated, needle) == []
        assert len(await _rows_naming(migrated, other)) == 1  # someone else's dead letter

        # Replays: the link again over HTTP, a dead letter again on the topic.
        r = await client.post("/v1/events", json=_link(customer, anon, f"{run}-relink"),
                              headers=shop)  # fmt: skip
        assert r.json()["links_refused"][0]["reason"] == "erased"
        await produce(bootstrap_servers, inbound, [_broken(customer, f"{run}-dl-again")],
                      key=lambda _: customer.encode())  # fmt: skip
        await produce(bootstrap_servers, inbound, [_broken(other, f"{run}-marker")],
                      key=lambda _: other.encode())  # fmt: skip

        async def marker_stored() -> bool:
            return bool(await _rows_naming(migrated, f"{run}-marker"))

        await until(marker_stored, "the later dead letter of someone else stored")
        assert await _rows_naming(migrated, customer) == []

        # The other services answer on the privacy topic; the request completes.
        for service in ("stage-engine", "scoring", "campaigns", "scoring"):  # one twice
            done = completed_event(service, request_id, {"rows": 1})
            await produce(bootstrap_servers, rt.topics.privacy, [encode_structured(done)],
                          key=lambda _: request_id.encode())  # fmt: skip

        async def completed() -> Any:
            body = (await client.get(f"/v1/privacy/erasures/{request_id}", headers=admin)).json()
            return body if body["status"] == "completed" else None

        final = await until(completed, "the request completed")
        assert final["completed_at"] is not None
        assert set(final["services"]) == {"ingest", "stage-engine", "scoring", "campaigns"}
        listed = (await client.get("/v1/privacy/erasures", headers=admin)).json()["erasures"]
        assert request_id in [e["request_id"] for e in listed]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "give exactly one of customer_id and email"),
        ({"customer_id": "a", "email": "a@example.com"}, "give exactly one"),
        ({"email": "not an email"}, "email"),
        ({"customer_id": ""}, "customer_id"),
    ],
)
async def test_a_bad_erasure_request_is_refused_naming_the_field_and_records_nothing(
    ingest: tuple[httpx.AsyncClient, Any], migrated: str, body: dict[str, Any], field: str
) -> None:
    client, _ = ingest
    admin = bearer(await make_key(migrated, "admin"))
    before = (await client.get("/v1/privacy/erasures", headers=admin)).json()["erasures"]
    r = await client.post("/v1/privacy/erasures", json=body, headers=admin)
    assert r.status_code == 422
    assert field in json.dumps(r.json())
    after = (await client.get("/v1/privacy/erasures", headers=admin)).json()["erasures"]
    assert after == before


async def test_erasures_need_an_admin_key_and_unknown_requests_are_404(
    ingest: tuple[httpx.AsyncClient, Any], migrated: str
) -> None:
    client, _ = ingest
    read = bearer(await make_key(migrated, "read"))
    r = await client.post("/v1/privacy/erasures", json={"customer_id": "x"}, headers=read)
    assert r.status_code == 403
    assert (await client.get("/v1/privacy/exports/x", headers=read)).status_code == 403
    admin = bearer(await make_key(migrated, "admin"))
    assert (await client.get("/v1/privacy/erasures/era_nope", headers=admin)).status_code == 404


async def test_an_email_erasure_or_an_export_without_the_services_answers_503_and_records_nothing(
    migrated: str, bootstrap_servers: str
) -> None:
    from clm_devstack.procs import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    urls = {"campaigns_url": closed, "stage_engine_url": closed, "scoring_url": closed}
    admin = bearer(await make_key(migrated, "admin"))
    async with running("clm_ingest", migrated, bootstrap_servers, **urls) as (client, _):
        before = (await client.get("/v1/privacy/erasures", headers=admin)).json()["erasures"]
        r = await client.post("/v1/privacy/erasures", json={"email": "a@example.com"},
                              headers=admin)  # fmt: skip
        assert r.status_code == 503 and "campaigns" in r.json()["detail"]
        assert r.headers["retry-after"]
        r = await client.get("/v1/privacy/exports/someone", headers=admin)
        assert r.status_code == 503 and "did not answer" in r.json()["detail"]
        after = (await client.get("/v1/privacy/erasures", headers=admin)).json()["erasures"]
        assert after == before
