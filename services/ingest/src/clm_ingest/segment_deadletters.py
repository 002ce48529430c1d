"""Segment messages in the dead-letter store.

A Segment message refused over HTTP goes to the dead-letter topic as the sender wrote it,
with what converting it again needs: the key's source, the call of the route, when it
arrived. A replay converts it with the mapping of the moment (a fixed name table, or a
corrected body) and sends the CloudEvents it gives to the inbound topic, where the gate
validates them again; one that still fails goes back to the dead-letter topic, marked as
a replay like any re-dead-lettered message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clm_events.deadletter import HEADER_PREFIX, MAX_REASON_BYTES
from clm_events.envelope import EventValidationError, FieldError, encode_structured
from clm_events.outbox import CONTENT_TYPE
from clm_events.producer import Message
from clm_events.topics import Topics
from clm_ingest.domain.gate import Problem, Reason
from clm_ingest.domain.segment import SegmentMapping, to_cloudevents

SOURCE_HEADER = "clm_segment_source"
CALL_HEADER = "clm_segment_call"
RECEIVED_HEADER = "clm_segment_received_at"
GROUP = "http"  # the `group` of a dead letter refused over HTTP

_KINDS = {Reason.invalid: "invalid_event"}  # the other reasons are the kinds' own names


def _reason(errors: Sequence[FieldError]) -> str:
    text = "; ".join(f"{e.path}: {e.reason}" if e.path else e.reason for e in errors)
    return "invalid event: " + text


def _dlq_headers(reason: str, kind: str, origin: str, index: int | None) -> list[tuple[str, bytes]]:
    headers = [
        (f"{HEADER_PREFIX}reason", reason.encode()[:MAX_REASON_BYTES]),
        (f"{HEADER_PREFIX}kind", kind.encode()),
        (f"{HEADER_PREFIX}topic", origin.encode()),
        (f"{HEADER_PREFIX}group", GROUP.encode()),
        (f"{HEADER_PREFIX}at", datetime.now(UTC).isoformat().encode()),
    ]
    if index is not None:  # where in its request: the dead letter's "offset"
        headers.append((f"{HEADER_PREFIX}offset", str(index).encode()))
    return headers


def _key(msg: Any) -> bytes | None:
    if not isinstance(msg, dict):
        return None
    subject = msg.get("userId") or msg.get("anonymousId")
    if not isinstance(subject, str | int):
        return None
    # An id may be the very text that got the message refused (an unpaired surrogate).
    return str(subject).encode("utf-8", "backslashreplace")


def deadletter(
    msg: Any,
    problems: Sequence[Problem],
    *,
    topic: str,
    route: str,
    call: str | None,
    source: str,
    received_at: datetime,
) -> Message:
    """The dead letter of a Segment message refused over HTTP."""
    kind = _KINDS.get(problems[0].kind, problems[0].kind.value)
    reason = _reason([FieldError(p.path, p.reason) for p in problems])
    headers = [
        (SOURCE_HEADER, source.encode()),
        (RECEIVED_HEADER, received_at.isoformat().encode()),
        *([(CALL_HEADER, call.encode())] if call else []),
        *_dlq_headers(reason, kind, route, problems[0].index),
    ]
    # ASCII escapes: text no service could store still round-trips through the store.
    value = json.dumps(msg, ensure_ascii=True).encode()
    return Message(topic=topic, key=_key(msg), value=value, headers=headers)


def is_segment(headers: Sequence[tuple[str, bytes]]) -> bool:
    return any(k == SOURCE_HEADER for k, _ in headers)


def replayed(
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    *,
    topics: Topics,
    mapping: SegmentMapping,
    origin: str,
    replay_of: tuple[str, bytes],
) -> list[Message]:
    """What replaying a Segment dead letter publishes. `headers` are the producer's (the
    `clm_segment_*` ones among them), `replay_of` the header naming the dead letter."""
    info = {k: v.decode("utf-8", "replace") for k, v in headers}
    try:
        received = datetime.fromisoformat(info.get(RECEIVED_HEADER, ""))
    except ValueError:
        received = datetime.now(UTC)
    try:
        try:
            msg = json.loads(value)
        except ValueError as exc:
            raise EventValidationError(
                [FieldError("", f"message is not valid JSON: {exc}")]
            ) from None
        events = to_cloudevents(
            msg,
            call=info.get(CALL_HEADER) or None,
            source=info[SOURCE_HEADER],
            mapping=mapping,
            received_at=received,
        )
    except EventValidationError as exc:
        failed = [*headers, replay_of, *_dlq_headers(_reason(exc.errors), exc.kind, origin, None)]
        return [Message(topic=topics.deadletter, key=key, value=value, headers=failed)]
    return [
        Message(
            topic=topics.inbound,
            key=e.subject.encode(),
            value=encode_structured(e),
            headers=[CONTENT_TYPE, replay_of],
        )
        for e in events
    ]
