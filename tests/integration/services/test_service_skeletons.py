"""Each service boots on the shared runtime: migrations, probes, metrics, consumers."""

from __future__ import annotations

import json

import pytest
from aiokafka import AIOKafkaProducer
from kit import SERVICES, running

from clm_events.deadletter import reason_of
from clm_events.envelope import decode_kafka_record


@pytest.mark.parametrize("package", SERVICES)
async def test_service_answers_probes_and_exports_metrics(
    package: str, migrated: str, bootstrap_servers: str
) -> None:
    async with running(package, migrated, bootstrap_servers) as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
        metrics = (await client.get("/metrics")).text
        assert 'clm_http_requests_total{method="GET",route="/readyz",' in metrics
        assert (await client.get("/openapi.json")).status_code == 200


async def test_ingest_routes_inbound_events_to_domain_topics_and_dead_letters_the_rest(
    migrated: str, bootstrap_servers: str
) -> None:
    from kit import purchase, read_topic

    async with running("clm_ingest", migrated, bootstrap_servers) as (_, runtime):
        topics = runtime.topics
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
        await producer.start()
        try:
            good = purchase("cust-9", "901")
            signup = {
                **purchase("cust-9", "x"),
                "id": "su-1",
                "type": "web.signed_up",
                "data": {"email": "ada@example.com"},
            }
            derived = {
                **purchase("cust-9", "y"),
                "id": "d-1",
                "type": "lifecycle.stage_changed",
                "data": {
                    "from_stage": None,
                    "to_stage": "active",
                    "at": "2026-11-20T10:15:00Z",
                    "cause": "forged",
                    "facts": {},
                },
            }
            for value in (good, b"{not json", signup, derived):
                raw = value if isinstance(value, bytes) else json.dumps(value).encode()
                await producer.send_and_wait(topics.inbound, raw, key=b"cust-9")
        finally:
            await producer.stop()

        purchases = await read_topic(
            bootstrap_servers, topics.domain("purchase.completed"), expect=1
        )
        web = await read_topic(bootstrap_servers, topics.domain("web.signed_up"), expect=1)
        dead = await read_topic(bootstrap_servers, topics.deadletter, expect=2)

    assert [decode_kafka_record(r.headers, r.value).id for r in purchases] == ["ord-901"]
    assert [r.key for r in purchases] == [b"cust-9"]
    assert [decode_kafka_record(r.headers, r.value).id for r in web] == ["su-1"]
    reasons = sorted((reason_of(r.headers)["kind"], reason_of(r.headers)["reason"]) for r in dead)
    assert [kind for kind, _ in reasons] == ["derived_type", "invalid_event"]
    assert "'lifecycle.stage_changed' is published by CLM itself" in reasons[0][1]
    assert reasons[1][1].startswith("invalid event:")
