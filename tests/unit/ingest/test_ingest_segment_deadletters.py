"""A Segment message refused over HTTP becomes a dead letter that can be stored and
converted again on replay, whatever text made it invalid."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from clm_events.deadletter import reason_of
from clm_events.envelope import EventValidationError, parse_structured
from clm_events.topics import Topics
from clm_ingest.domain.gate import admit, parse_each
from clm_ingest.domain.segment import SegmentMapping, to_cloudevents
from clm_ingest.segment_deadletters import deadletter, replayed

NOW = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
TOPICS = Topics("t.")
MARK = ("clm_replay_of", b"t.events.deadletter/0/7")


def dead(msg: Any) -> Any:
    def parse(m: Any) -> Any:
        return to_cloudevents(m, call=None, source="web", mapping=SegmentMapping(), received_at=NOW)

    verdict = admit(parse_each([msg], parse), key_source="web", max_event_bytes=32768, batch=True)
    [problems] = verdict.refused.values()
    return deadletter(
        msg, problems, topic=TOPICS.deadletter, route="/v1/batch", call=None, source="web",
        received_at=NOW,
    )  # fmt: skip


@pytest.mark.parametrize("user", ["cust-\udfff", "cust-\x00"])
def test_a_message_refused_for_its_text_is_a_dead_letter_of_bytes(user: str) -> None:
    message = dead({"type": "identify", "messageId": "m-1", "userId": user})
    info = reason_of(message.headers)
    assert (info["kind"], info["topic"], info["offset"]) == ("unstorable_text", "/v1/batch", "0")
    assert "userId" in info["reason"]
    assert isinstance(message.key, bytes) and json.loads(message.value)["messageId"] == "m-1"


def test_a_replay_converts_the_fixed_message_or_dead_letters_it_again() -> None:
    bad = {"type": "track", "event": "Order Completed", "messageId": "m-2", "userId": "c",
           "properties": {"order_id": "1", "revenue": 5}}  # fmt: skip
    message = dead(bad)
    own = [(k, v) for k, v in message.headers if not k.startswith("clm_dlq_")]

    def replay(value: bytes) -> Any:
        return replayed(
            message.key, value, own, topics=TOPICS, mapping=SegmentMapping(),
            origin="/v1/batch", replay_of=MARK,
        )  # fmt: skip

    [again] = replay(message.value)
    assert again.topic == TOPICS.deadletter and MARK in again.headers
    assert "properties.currency" in reason_of(again.headers)["reason"]

    fixed = {**bad, "properties": {**bad["properties"], "currency": "EUR"}}
    [event] = replay(json.dumps(fixed).encode())
    assert (event.topic, event.key, MARK in event.headers) == (TOPICS.inbound, b"c", True)
    assert parse_structured(event.value).time == NOW  # the time it first arrived

    [garbage] = replay(b"{nope")
    assert garbage.topic == TOPICS.deadletter
    with pytest.raises(EventValidationError):
        parse_structured(garbage.value)
