"""Dead-letter messages: the original key, bytes and headers, plus why and where from."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from clm_events.producer import Message

MAX_REASON_BYTES = 2048
HEADER_PREFIX = "clm_dlq_"


def deadletter_message(
    record: ConsumerRecord[bytes, bytes], *, reason: str, kind: str, group: str, topic: str
) -> Message:
    """`reason` says what is wrong for people; `kind` names the rule for tools and alerts
    (`invalid_event`, `unstorable_text`, `derived_type`, `too_large`, `handler_error`)."""
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith(HEADER_PREFIX)]
    headers += [
        (f"{HEADER_PREFIX}reason", reason.encode()[:MAX_REASON_BYTES]),
        (f"{HEADER_PREFIX}kind", kind.encode()),
        (f"{HEADER_PREFIX}topic", record.topic.encode()),
        (f"{HEADER_PREFIX}partition", str(record.partition).encode()),
        (f"{HEADER_PREFIX}offset", str(record.offset).encode()),
        (f"{HEADER_PREFIX}group", group.encode()),
        (f"{HEADER_PREFIX}at", datetime.now(UTC).isoformat().encode()),
    ]
    return Message(topic=topic, key=record.key, value=record.value or b"", headers=headers)


def reason_of(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """The `clm_dlq_*` headers of a dead-lettered message as a dict (for tools and tests)."""
    return {
        k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace")
        for k, v in headers
        if k.startswith(HEADER_PREFIX)
    }
