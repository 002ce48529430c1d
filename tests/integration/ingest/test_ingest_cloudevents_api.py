"""POST /v1/events against the real broker: accepted events land on their domain topic
keyed by customer; every refused request says why and publishes nothing."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
from kit import bearer, make_key, purchase, read_topic, running

from clm_events.envelope import decode_kafka_record

BATCH = {"Content-Type": "application/cloudevents-batch+json"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def signup(customer: str, i: int) -> dict[str, Any]:
    return {
        **purchase(customer, str(i)),
        "id": f"su-{i}",
        "type": "web.signed_up",
        "data": {"email": f"{customer}@example.com"},
    }


async def test_structured_binary_and_batch_events_are_routed_by_type_and_keyed_by_customer(
    ingest: tuple[httpx.AsyncClient, Any], shop_key: str, bootstrap_servers: str
) -> None:
    client, runtime = ingest
    single = await client.post(
        "/v1/events",
        content=json.dumps(purchase("cust-1", "1")),
        headers=bearer(shop_key) | STRUCTURED,
    )
    assert (single.status_code, single.json()) == (202, {"accepted": 1})

    binary = await client.post(
        "/v1/events",
        content=json.dumps({"order_id": "2", "amount": "12.50", "currency": "EUR"}),
        headers=bearer(shop_key)
        | {
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "ord-2",
            "ce-source": "shop/checkout",
            "ce-type": "purchase.completed",
            "ce-subject": "cust-2",
            "ce-time": "2026-11-20T10:15:00Z",
        },
    )
    assert binary.status_code == 202, binary.text

    batch = [purchase("cust-3", "3"), signup("cust-3", 4), signup("cust-5", 5)]
    accepted = await client.post(
        "/v1/events", content=json.dumps(batch), headers=bearer(shop_key) | BATCH
    )
    assert (accepted.status_code, accepted.json()) == (202, {"accepted": 3})

    topics = runtime.topics
    purchases = await read_topic(bootstrap_servers, topics.domain("purchase.completed"), expect=3)
    web = await read_topic(bootstrap_servers, topics.domain("web.signed_up"), expect=2)
    assert sorted((r.key, decode_kafka_record(r.headers, r.value).id) for r in purchases) == [
        (b"cust-1", "ord-1"),
        (b"cust-2", "ord-2"),
        (b"cust-3", "ord-3"),
    ]
    assert sorted(r.key for r in web) == [b"cust-3", b"cust-5"]
    # Binary mode in, structured CloudEvent out, like everything on the domain topics.
    binary_record = next(r for r in purchases if r.key == b"cust-2")
    assert json.loads(binary_record.value)["data"]["amount"] == "12.50"
    assert dict(binary_record.headers)["content-type"] == b"application/cloudevents+json"


async def test_gzip_bodies_are_accepted(
    ingest: tuple[httpx.AsyncClient, Any], shop_key: str, bootstrap_servers: str
) -> None:
    client, runtime = ingest
    body = gzip.compress(json.dumps([signup("cust-gz", 40)]).encode())
    response = await client.post(
        "/v1/events", content=body, headers=bearer(shop_key) | BATCH | {"Content-Encoding": "gzip"}
    )
    assert response.status_code == 202, response.text
    web = await read_topic(bootstrap_servers, runtime.topics.domain("web.signed_up"), expect=3)
    assert b"cust-gz" in {r.key for r in web}


async def test_every_refused_request_says_why_and_publishes_nothing(
    migrated: str, bootstrap_servers: str, shop_key: str
) -> None:
    read_key = await make_key(migrated, "read")
    billing_key = await make_key(migrated, "source", "billing")
    async with running("clm_ingest", migrated, bootstrap_servers) as (client, runtime):

        async def post(body: Any, headers: dict[str, str], key: str | None = shop_key) -> Any:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            auth = bearer(key) if key else {}
            return await client.post("/v1/events", content=content, headers=auth | headers)

        good = purchase("cust-1", "1")
        no_key = await post(good, STRUCTURED, key=None)
        assert no_key.status_code == 401 and "missing API key" in no_key.json()["detail"]
        assert "Bearer" in no_key.headers["WWW-Authenticate"]
        assert (await post(good, STRUCTURED, key="clm_source_forged")).status_code == 401
        assert (await post(good, STRUCTURED, key=read_key)).status_code == 403

        foreign = await post([good], BATCH, key=billing_key)
        assert foreign.status_code == 403
        assert foreign.json()["errors"] == [
            {
                "index": 0,
                "path": "source",
                "reason": "this key may only publish events of source 'billing' "
                "(or 'billing/...'), not 'shop/checkout'",
            }
        ]

        missing_currency = purchase("cust-2", "2")
        del missing_currency["data"]["currency"]
        unknown = {**purchase("cust-3", "3"), "type": "purchase.teleported"}
        invalid = await post([good, missing_currency, unknown], BATCH)
        assert invalid.status_code == 422
        body = invalid.json()
        assert body["detail"] == "2 of 3 events refused; nothing was published"
        assert [(e["index"], e["path"]) for e in body["errors"]] == [
            (1, "data.currency"),
            (2, "type"),
        ]
        assert "unknown event type 'purchase.teleported'" in body["errors"][1]["reason"]

        forged = {
            **good,
            "type": "lifecycle.stage_changed",
            "data": {"to_stage": "loyal", "at": "2026-11-20T10:15:00Z", "cause": "forged"},
        }
        derived = await post(forged, STRUCTURED)
        assert derived.status_code == 422
        assert "published by CLM itself" in derived.json()["errors"][0]["reason"]

        big_event = purchase("cust-4", "4", data={**good["data"], "note": "x" * 33_000})
        too_big = await post(big_event, STRUCTURED)
        assert too_big.status_code == 413
        assert "over the 32768-byte limit" in too_big.json()["detail"]
        in_batch = await post([good, big_event], BATCH)
        assert in_batch.status_code == 413
        assert in_batch.json()["errors"][0]["index"] == 1

        huge_batch = [purchase(f"c-{i}", str(i)) for i in range(2500)]
        huge = await post(huge_batch, BATCH)
        assert huge.status_code == 413
        assert "batch is over the 512000-byte limit" in huge.json()["detail"]
        bomb = gzip.compress(b"[" + b" " * 2_000_000 + b"]")
        assert (await post(bomb, BATCH | {"Content-Encoding": "gzip"})).status_code == 413

        not_json = await post(b'{"specversion": ', STRUCTURED)
        assert not_json.status_code == 400
        assert not_json.json()["detail"].startswith("body is not valid JSON")
        wrong_type = await post(b"<event/>", {"Content-Type": "application/xml"})
        assert wrong_type.status_code == 415
        assert "application/cloudevents+json" in wrong_type.json()["detail"]

        for domain in ("purchase.completed", "web.signed_up"):
            topic = runtime.topics.domain(domain)
            assert await read_topic(bootstrap_servers, topic, expect=0) == []


async def test_a_key_over_its_rate_gets_429_with_retry_after(
    migrated: str, bootstrap_servers: str, shop_key: str
) -> None:
    async with running(
        "clm_ingest",
        migrated,
        bootstrap_servers,
        rate_limit_events_per_second=1,
        rate_limit_burst=3,
    ) as (client, runtime):
        batch = [purchase(f"cust-{i}", str(i)) for i in range(3)]
        headers = bearer(shop_key) | BATCH
        first = await client.post("/v1/events", content=json.dumps(batch), headers=headers)
        assert first.status_code == 202
        limited = await client.post("/v1/events", content=json.dumps(batch), headers=headers)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert "over its event rate" in limited.json()["detail"]
        other_key = await make_key(migrated, "source", "shop")
        another = [purchase("cust-9", "9")]
        other = await client.post(
            "/v1/events", content=json.dumps(another), headers=bearer(other_key) | BATCH
        )
        assert other.status_code == 202  # the limit is per key
        topic = runtime.topics.domain("purchase.completed")
        assert len(await read_topic(bootstrap_servers, topic, expect=4)) == 4


async def test_metrics_count_requests_and_events_by_outcome(
    ingest: tuple[httpx.AsyncClient, Any], shop_key: str
) -> None:
    client, _ = ingest
    await client.post("/v1/events", content=b"[]", headers=bearer(shop_key) | BATCH)
    await client.post(
        "/v1/events", content=json.dumps([{"type": "nope"}]), headers=bearer(shop_key) | BATCH
    )
    text = (await client.get("/metrics")).text
    assert (
        'clm_http_requests_total{method="POST",route="/v1/events",service="ingest",status="202"}'
        in text
    )
    assert 'route="/v1/events",service="ingest",status="422"' in text
    assert (
        'clm_ingest_events_accepted_total{channel="cloudevents",source="shop",'
        'type="purchase.completed"}' in text
    )
    assert 'clm_ingest_events_rejected_total{reason="invalid",source="shop",type="unknown"}' in text
    assert "clm_ingest_publish_duration_seconds_bucket" in text
    assert 'clm_ingest_request_events_bucket{channel="cloudevents",le="500.0"}' in text
