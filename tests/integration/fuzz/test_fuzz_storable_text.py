"""Arbitrary unicode in every string field, through every way into ingest, with the whole
pipeline consuming: every event ingest accepts is stored by every service that reads its
topic, and every refusal names the field that holds the text.

Hypothesis draws a way in (CloudEvents structured, batch or binary; Segment identify, track
or batch; the inbound Kafka topic), a field, and text from all of Unicode (U+0000 and
unpaired surrogates included). The events are otherwise valid, so the oracle is plain:
storable text is accepted, the rest is refused naming its field. The report counts events
accepted and then dead-lettered downstream (what a fuzz of the API found before the gate
refused such text); the test fails unless that count is 0. CLM_FUZZ_EXAMPLES scales it
(`make fuzz`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kit import make_key, read_topic, running, serving
from sqlalchemy.ext.asyncio import create_async_engine

from clm_events.deadletter import reason_of

EXAMPLES = int(os.environ.get("CLM_FUZZ_EXAMPLES", "6")) * 25
DOWNSTREAM = {
    "clm_stage_engine": "stage_engine",
    "clm_scoring": "scoring",
    "clm_campaigns": "campaigns",
}
READS = {  # which services consume each type's topic
    "web.identified": ("stage_engine", "campaigns"),
    "support.nps_submitted": ("stage_engine", "campaigns"),
    "purchase.completed": ("stage_engine", "scoring", "campaigns"),
}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}

# Every code point: hypothesis leaves surrogates out unless asked. Text with a NUL or a
# surrogate is forced often, or the refusals would be rare.
ANY = st.text(st.characters(codec=None, exclude_categories=()), max_size=10)
TEXT = st.one_of(
    ANY,
    st.tuples(ANY, st.sampled_from(["\x00", "\ud800", "\udfff"]), ANY).map("".join),
)

CLOUDEVENT_FIELDS = [
    "id", "source", "subject", "data.traits.name", "data.traits.<key>", "data.comment",
    "data.order_id", "data.items.0.category", "traceparent",
]  # fmt: skip
DATA_FIELDS = [f for f in CLOUDEVENT_FIELDS if f.startswith("data.")]
SEGMENT_FIELDS = {
    "identify": ["userId", "messageId", "traits.name", "traits.<key>"],
    "track": ["userId", "properties.order_id", "properties.coupon"],
}
ROUTES = ["structured", "batch", "binary", "inbound", "identify", "track", "segment-batch"]


def unstorable(text: str) -> bool:
    """The oracle, written apart from the code under test: PostgreSQL text takes any
    code point but U+0000, and UTF-8 has no surrogates."""
    return any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in text)


@dataclass
class Sent:
    route: str
    field: str
    text: str
    key: tuple[str, str]  # (source, id) as ingest publishes it
    type: str
    accepted: bool | None = None  # None: sent to Kafka, known once ingest has consumed it


def cloudevent(n: int, field: str, text: str) -> tuple[dict[str, Any], str]:
    """An otherwise valid event with `text` in `field`; and the path a refusal must name
    (a prefix, when it ends with a dot: the text is a key)."""
    event_type = {
        "subject": "purchase.completed",
        "data.order_id": "purchase.completed",
        "data.items.0.category": "purchase.completed",
        "data.comment": "support.nps_submitted",
    }.get(field, "web.identified")
    data: dict[str, Any] = {
        "web.identified": {"traits": {"name": "Nine"}},
        "support.nps_submitted": {"score": 9},
        "purchase.completed": {"order_id": f"o-{n}", "amount": "10.00", "currency": "EUR"},
    }[event_type]
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"fz-{n}",
        "source": "fuzz/web",
        "type": event_type,
        "subject": f"fz-cust-{n}",
        "time": datetime.now(UTC).isoformat(),
        "data": data,
    }
    path = field
    if field == "id":
        event["id"] = f"fz-{n}-{text}"
    elif field == "source":
        event["source"] = f"fuzz/{text}"
    elif field == "subject":
        event["subject"] = f"fz-cust-{n}-{text}"
    elif field == "traceparent":
        event["traceparent"] = text
    elif field == "data.traits.name":
        data["traits"]["name"] = text
    elif field == "data.traits.<key>":
        data["traits"][text] = "value"
        path = "data.traits."
    elif field == "data.comment":
        data["comment"] = text
    elif field == "data.order_id":
        data["order_id"] = f"o-{n}-{text}"
    else:
        data["items"] = [{"sku": "s-1", "category": text}]
    return event, path


def segment(n: int, call: str, field: str, text: str) -> tuple[dict[str, Any], str]:
    message: dict[str, Any] = {
        "type": call,
        "messageId": f"fz-{n}",
        "userId": f"fz-cust-{n}",
        "timestamp": datetime.now(UTC).isoformat(),
        "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
    }
    if call == "identify":
        message["traits"] = {"name": "Nine"}
    else:
        message["event"] = "Order Completed"
        message["properties"] = {"order_id": f"o-{n}", "revenue": 10, "currency": "EUR"}
    path = field
    if field in ("userId", "messageId"):
        message[field] = f"{message[field]}-{text}"
    elif field == "traits.<key>":
        message["traits"][text] = "value"
        path = "traits."
    elif field == "properties.order_id":
        message["properties"]["order_id"] = f"o-{n}-{text}"  # an empty id is refused
    else:
        parent, name = field.split(".")
        message[parent][name] = text
    return message, path


def drive(base_url: str, key: str, to_inbound: Callable[[bytes], None]) -> list[Sent]:
    """Hypothesis in this worker thread, HTTP as a client would send it; the per-request
    checks run here so a failure is shrunk to its smallest text."""
    sent: list[Sent] = []
    counter = itertools.count()
    http = httpx.Client(base_url=base_url, timeout=30)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=EXAMPLES <= 300,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(route=st.sampled_from(ROUTES), pick=st.integers(0, 99), text=TEXT)
    def one(route: str, pick: int, text: str) -> None:
        n = next(counter)
        if route in ("identify", "track", "segment-batch"):
            call = "identify" if route != "track" and pick % 2 else "track"
            fields = SEGMENT_FIELDS[call]
            field = fields[pick % len(fields)]
            message, path = segment(n, call, field, text)
            body = {"batch": [message]} if route == "segment-batch" else message
            event_id = message["messageId"]
            item = Sent(route, field, text, ("fuzz", event_id), _segment_type(call))
            answer = http.post(
                "/v1/batch" if route == "segment-batch" else f"/v1/{call}",
                content=json.dumps(body).encode(),  # ASCII escapes carry surrogates too
                headers={"Content-Type": "application/json"},
                auth=(key, ""),  # what Segment libraries send: the write key as username
            )
        else:
            fields = DATA_FIELDS if route == "binary" else CLOUDEVENT_FIELDS
            field = fields[pick % len(fields)]
            event, path = cloudevent(n, field, text)
            item = Sent(route, field, text, (event["source"], event["id"]), event["type"])
            if route == "inbound":
                to_inbound(json.dumps(event).encode())
                sent.append(item)
                return
            answer = _post_cloudevent(http, key, route, event)
        segment_call = route in ("identify", "track", "segment-batch")
        refused: list[dict[str, Any]] = []
        if unstorable(text) and segment_call:
            # Segment requests are accepted; the message goes to the dead-letter store.
            assert answer.status_code == 202, (answer.status_code, answer.text)
            refused = answer.json()["deadlettered"]
            assert [e.get("index", 0) for e in refused] == [0]  # index: on /v1/batch only
        elif unstorable(text):
            assert answer.status_code == 422, (answer.status_code, answer.text)
            refused = answer.json()["errors"]
        else:
            assert answer.status_code == 202, (route, field, text, answer.text)
            assert not answer.json().get("deadlettered"), answer.text
        for error in refused:
            assert error["path"].startswith(path) if path.endswith(".") else error["path"] == path
            assert "U+" in error["reason"]
        item.accepted = answer.status_code == 202 and not refused
        sent.append(item)

    try:
        one()
    finally:
        http.close()
    return sent


def _segment_type(call: str) -> str:
    return "web.identified" if call == "identify" else "purchase.completed"


def _post_cloudevent(http: httpx.Client, key: str, route: str, event: dict[str, Any]) -> Any:
    auth = {"Authorization": f"Bearer {key}"}
    if route == "binary":
        headers = {f"ce-{k}": str(v) for k, v in event.items() if k != "data"}
        headers["Content-Type"] = "application/json"
        body = json.dumps(event["data"]).encode()
        return http.post("/v1/events", content=body, headers={**headers, **auth})
    body = json.dumps([event] if route == "batch" else event).encode()
    return http.post(
        "/v1/events", content=body, headers={**auth, **(BATCH if route == "batch" else STRUCTURED)}
    )


async def test_every_event_ingest_accepts_is_stored_by_every_service(
    fuzz_database: str, bootstrap_servers: str
) -> None:
    prefix = f"fz{uuid.uuid4().hex[:8]}."
    key = await make_key(fuzz_database, "source", "fuzz")
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        for package in DOWNSTREAM:
            await stack.enter_async_context(
                running(package, fuzz_database, bootstrap_servers, topic_prefix=prefix)
            )
        base_url, ingest = await stack.enter_async_context(
            serving(
                "clm_ingest",
                fuzz_database,
                bootstrap_servers,
                topic_prefix=prefix,
                rate_limit_events_per_second=1e6,
                rate_limit_burst=1_000_000,
            )
        )
        topics = ingest.topics
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        stack.push_async_callback(producer.stop)

        def to_inbound(value: bytes) -> None:
            send = producer.send_and_wait(topics.inbound, value, key=b"fuzz")
            asyncio.run_coroutine_threadsafe(send, loop).result(timeout=30)

        sent = await asyncio.to_thread(drive, base_url, key, to_inbound)
        for item in sent:
            if item.accepted is None:  # inbound: the oracle says what ingest must do
                item.accepted = not unstorable(item.text)
        stored = await _wait_stored(fuzz_database, sent)
        refused_inbound = [s for s in sent if s.route == "inbound" and not s.accepted]
        dead = await read_topic(bootstrap_servers, topics.deadletter, expect=len(refused_inbound))

    # Refused by ingest itself: on the inbound topic, or a Segment message (its route).
    downstream_dead = [
        r
        for r in dead
        if reason_of(r.headers).get("topic") != topics.inbound
        and reason_of(r.headers).get("group") != "http"
    ]
    inbound_dead = [
        reason_of(r.headers) for r in dead if reason_of(r.headers).get("topic") == topics.inbound
    ]
    segment_dead = [r for r in dead if reason_of(r.headers).get("group") == "http"]
    segment_routes = ("identify", "track", "segment-batch")
    refused_segment = [s for s in sent if not s.accepted and s.route in segment_routes]
    accepted = [s for s in sent if s.accepted]
    print(
        f"\nfuzzed {len(sent)} events ({len(accepted)} accepted, {len(sent) - len(accepted)} "
        f"refused); accepted then dead-lettered downstream: {len(downstream_dead)}"
    )
    assert not downstream_dead, [reason_of(r.headers) for r in downstream_dead][:5]
    assert len(inbound_dead) == len(refused_inbound)
    # Segment messages refused for their text wait in the dead-letter store, one each.
    assert len(segment_dead) == len(refused_segment)
    assert {d["kind"] for d in inbound_dead} <= {"unstorable_text"}
    missing = [
        (s.route, s.field, s.text, service)
        for s in accepted
        for service in READS[s.type]
        if s.key not in stored[service]
    ]
    assert not missing, missing[:10]
    leaked = [s for s in sent if not s.accepted and any(s.key in keys for keys in stored.values())]
    assert not leaked


async def _wait_stored(database_url: str, sent: list[Sent]) -> dict[str, set[tuple[str, str]]]:
    """Each service's applied (source, id) keys, once every accepted event is in each
    service that reads it (or 90 s passed)."""
    engine = create_async_engine(database_url)
    expected = {
        service: {s.key for s in sent if s.accepted and service in READS[s.type]}
        for service in DOWNSTREAM.values()
    }
    stored: dict[str, set[tuple[str, str]]] = {}
    try:
        for _ in range(180):
            async with engine.connect() as conn:
                for schema in [*DOWNSTREAM.values(), "ingest"]:
                    rows = await conn.execute(
                        sa.text(f'SELECT source, event_id FROM "{schema}".processed_events')
                    )
                    stored[schema] = {(r.source, r.event_id) for r in rows}
            if all(expected[s] <= stored[s] for s in expected):
                break
            await asyncio.sleep(0.5)
        return stored
    finally:
        await engine.dispose()
