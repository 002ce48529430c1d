"""The inbound Kafka gate: what systems publish straight to the inbound topic is checked
like HTTP input; valid events flow on while each bad one is dead-lettered with its reason."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from kit import purchase, read_topic

from clm_events.deadletter import reason_of
from clm_events.envelope import decode_kafka_record


async def test_valid_events_flow_while_garbage_is_dead_lettered_with_the_reason(
    ingest: tuple[httpx.AsyncClient, Any], bootstrap_servers: str
) -> None:
    _, runtime = ingest
    topics = runtime.topics
    binary_headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"tkt-1"),
        ("ce_source", b"support/desk"),
        ("ce_type", b"support.ticket_opened"),
        ("ce_subject", b"cust-20"),
        ("ce_time", b"2026-11-20T10:15:00Z"),
        ("content-type", b"application/json"),
    ]
    missing_amount = purchase("cust-21", "21")
    del missing_amount["data"]["amount"]
    oversized = purchase("cust-22", "22", data={**purchase("c", "1")["data"], "n": "x" * 40_000})
    nul = purchase("cust-\x00-24", "24")
    derived = {
        **purchase("cust-25", "25"),
        "type": "lifecycle.stage_changed",
        "data": {"to_stage": "loyal", "at": "2026-11-20T10:15:00Z", "cause": "forged"},
    }
    sent: list[tuple[bytes, list[tuple[str, bytes]]]] = [
        (b"\x00\xffnot an event", []),
        (json.dumps(purchase("cust-20", "20")).encode(), []),
        (json.dumps(missing_amount).encode(), []),
        (json.dumps({"ticket_id": "T-1", "priority": "high"}).encode(), binary_headers),
        (json.dumps(oversized).encode(), []),
        (json.dumps(purchase("cust-23", "23")).encode(), []),
        (json.dumps(nul).encode(), []),
        (json.dumps(derived).encode(), []),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for value, headers in sent:
            await producer.send_and_wait(topics.inbound, value, key=b"k", headers=headers)
    finally:
        await producer.stop()

    purchases = await read_topic(bootstrap_servers, topics.domain("purchase.completed"), expect=2)
    support = await read_topic(bootstrap_servers, topics.domain("support.ticket_opened"), expect=1)
    dead = await read_topic(bootstrap_servers, topics.deadletter, expect=5)

    ours = [decode_kafka_record(r.headers, r.value) for r in purchases]
    assert {e.id for e in ours} >= {"ord-20", "ord-23"}
    assert "ord-21" not in {e.id for e in ours} and "ord-22" not in {e.id for e in ours}
    [ticket] = support
    assert ticket.key == b"cust-20"  # routed by subject, not by the producer's key
    assert json.loads(ticket.value)["data"] == {"ticket_id": "T-1", "priority": "high"}

    reasons = {r.value[:20]: reason_of(r.headers) for r in dead}
    assert reasons[b"\x00\xffnot an event"]["reason"].startswith("invalid event:")
    assert reasons[b"\x00\xffnot an event"]["topic"] == topics.inbound
    [missing] = [reason_of(r.headers) for r in dead if b'"ord-21"' in r.value]
    assert "data.amount: field required" in missing["reason"]
    [big] = [reason_of(r.headers) for r in dead if b'"ord-22"' in r.value]
    assert "the limit is 32768" in big["reason"]
    # Each refusal has its own kind: none is a handler error, which pages the team as a bug.
    kinds = [reason_of(r.headers)["kind"] for r in dead]
    assert sorted(kinds) == sorted(
        ["invalid_event", "invalid_event", "too_large", "unstorable_text", "derived_type"]
    )
    [unstorable] = [reason_of(r.headers) for r in dead if b'"ord-24"' in r.value]
    assert "subject: text contains U+0000" in unstorable["reason"]
    [forged] = [reason_of(r.headers) for r in dead if b'"ord-25"' in r.value]
    assert (forged["kind"], "published by CLM itself" in forged["reason"]) == ("derived_type", True)
