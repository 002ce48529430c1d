"""The dead-letter store: every message on the dead-letter topic, kept in the database so
people can look at it, fix it and replay it after the topic's retention has dropped it
(the local broker keeps nothing across restarts at all).

A loop consumes the dead-letter topic in its own consumer group and inserts each message
keyed by its (partition, offset) on that topic, then commits the offsets: a crash re-reads
the batch and the insert ignores rows it already has. Ingest replicas share the topic's
partitions through the group.

Replay (`POST /v1/deadletters/{id}/replay`) re-publishes the original key, bytes and
headers (or a corrected body) to the inbound topic, where the gate validates it again; a
still-bad message comes back as a new dead letter marked as a replay.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.deadletter import reason_of
from clm_events.privacy import Tombstones
from clm_events.producer import Producer
from clm_events.storable import printable
from clm_events.topics import Topics
from clm_ingest.deadletter import REPLAY_HEADER, producer_headers, replay_messages
from clm_ingest.domain.segment import SegmentMapping
from clm_ingest.models import deadletters

log = logging.getLogger(__name__)
MAX_PAYLOAD_CHARS = 32 * 1024  # what a list answer carries per message


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _time(at: str | None) -> datetime:
    try:
        return datetime.fromisoformat(at) if at else datetime.now(UTC)
    except ValueError:  # a producer wrote the header: not ours to trust
        return datetime.now(UTC)


def row_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """The stored form of one dead-letter record."""
    headers = list(record.headers or ())
    info = reason_of(headers)
    replay_of = next(
        (printable(v.decode("utf-8", "replace")) for k, v in headers if k == REPLAY_HEADER), None
    )
    # Headers are bytes from anyone who can produce: a NUL in one must not make the row
    # unstorable, or this loop would retry the batch for ever.
    info = {name: printable(value) for name, value in info.items()}
    return {
        "partition": record.partition,
        "offset": record.offset,
        "at": _time(info.get("at")),
        "reason": info.get("reason", ""),
        "source_topic": info.get("topic", ""),
        "source_partition": _int(info.get("partition")),
        "source_offset": _int(info.get("offset")),
        "consumer_group": info.get("group"),
        "key": record.key,
        "value": record.value or b"",
        # Only the producer's own headers: replay must not carry the dead-letter ones.
        "headers": [
            [printable(k), base64.b64encode(v).decode()] for k, v in producer_headers(headers)
        ],
        "replay_of": replay_of,
    }


def _subjects(record: ConsumerRecord[bytes, bytes]) -> set[str]:
    """The ids a dead letter may belong to: its key, a binary-mode subject header, and
    the subject (or Segment's userId/anonymousId) when its body parses."""
    ids = {record.key.decode("utf-8", "replace")} if record.key else set()
    ids |= {v.decode("utf-8", "replace") for k, v in record.headers or () if k == "ce_subject"}
    try:
        body = json.loads(record.value or b"")
    except ValueError:
        return ids
    if isinstance(body, dict):
        ids |= {
            v for k in ("subject", "userId", "anonymousId") if isinstance(v := body.get(k), str)
        }
    return ids


async def store(
    session: AsyncSession,
    records: Sequence[ConsumerRecord[bytes, bytes]],
    tombstones: Tombstones,
) -> None:
    """Keep the records, except those of an erased customer (a replay of one that failed
    again, or an event still in flight when the erasure ran)."""
    candidates = [_subjects(r) for r in records]
    erased = await tombstones.erased(session, set().union(*candidates))
    rows = [row_of(r) for r, ids in zip(records, candidates, strict=True) if not ids & erased]
    if rows:
        await session.execute(insert(deadletters).values(rows).on_conflict_do_nothing())


class DeadletterStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tombstones: Tombstones,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        retry_seconds: float = 2.0,
    ) -> None:
        self._sessions = sessions
        self._tombstones = tombstones
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._group_id = group_id
        self._retry = retry_seconds

    async def run(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Database or broker trouble: start again from the committed offsets.
                log.exception("dead-letter store failed; retrying")
                await asyncio.sleep(self._retry)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                records = [r for rs in batch.values() for r in rs]
                if not records:
                    continue
                async with self._sessions.begin() as session:
                    await store(session, records, self._tombstones)
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs})
        finally:
            await consumer.stop()


def parse_id(deadletter_id: str) -> tuple[int, int] | None:
    """`<partition>-<offset>` on the dead-letter topic, or None if malformed."""
    partition, sep, offset = deadletter_id.partition("-")
    if not sep or not partition.isdigit() or not offset.isdigit():
        return None
    return int(partition), int(offset)


def describe(row: sa.Row[Any]) -> dict[str, Any]:
    text = bytes(row.value).decode("utf-8", "replace")
    return {
        "id": f"{row.partition}-{row.offset}",
        "at": row.at.isoformat(),
        "reason": row.reason,
        "source_topic": row.source_topic,
        "source_partition": row.source_partition,
        "source_offset": row.source_offset,
        "group": row.consumer_group,
        "key": bytes(row.key).decode("utf-8", "replace") if row.key is not None else None,
        "payload": text[:MAX_PAYLOAD_CHARS],
        "payload_truncated": len(text) > MAX_PAYLOAD_CHARS,
        "headers": {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in row.headers},
        "replay_of": row.replay_of,
        "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None,
    }


async def list_rows(
    session: AsyncSession,
    *,
    limit: int,
    reason: str | None,
    source_topic: str | None,
    before: tuple[datetime, int, int] | None = None,
) -> list[sa.Row[Any]]:
    q = sa.select(deadletters).order_by(
        deadletters.c.at.desc(), deadletters.c.partition.desc(), deadletters.c.offset.desc()
    )
    if reason:
        q = q.where(deadletters.c.reason.icontains(reason, autoescape=True))
    if source_topic:
        q = q.where(deadletters.c.source_topic == source_topic)
    if before is not None:
        q = q.where(
            sa.tuple_(deadletters.c.at, deadletters.c.partition, deadletters.c.offset)
            < sa.tuple_(*before)
        )
    return list((await session.execute(q.limit(limit))).all())


async def get_row(session: AsyncSession, partition: int, offset: int) -> sa.Row[Any] | None:
    q = sa.select(deadletters).where(
        deadletters.c.partition == partition, deadletters.c.offset == offset
    )
    return (await session.execute(q)).first()


async def replay(
    sessions: async_sessionmaker[AsyncSession],
    producer: Producer,
    row: sa.Row[Any],
    *,
    topics: Topics,
    mapping: SegmentMapping,
    payload: bytes | None,
) -> int:
    """Publish the message (or its corrected body) to the inbound topic, then record when;
    return how many messages that was (a Segment message converts to 0 to 2 events).

    A crash between the two re-publishes on a second click, which is harmless: consumers
    dedupe on the event's (source, id)."""
    stored = [(k, base64.b64decode(v)) for k, v in row.headers]
    messages = replay_messages(
        bytes(row.key) if row.key is not None else None,
        payload if payload is not None else bytes(row.value),
        stored,
        (topics.deadletter, row.partition, row.offset),
        topics=topics,
        mapping=mapping,
        origin=row.source_topic,
    )
    await producer.send_batch(messages)
    async with sessions.begin() as session:
        await session.execute(
            sa.update(deadletters)
            .where(deadletters.c.partition == row.partition, deadletters.c.offset == row.offset)
            .values(replayed_at=sa.func.now())
        )
    return len(messages)
