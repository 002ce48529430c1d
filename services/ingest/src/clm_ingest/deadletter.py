"""`clm-ingest deadletter list|replay`: look at the dead-letter topic and send chosen
messages back through the ingest gate.

Replay re-publishes a dead-lettered message's original key, bytes and headers (without the
`clm_dlq_*` ones) to the inbound topic, so ingest validates it again: a fixed bug or a
raised limit lets it through, a still-bad message is dead-lettered once more. A Segment
message refused over HTTP is converted first (segment_deadletters.py).

Running the same replay twice is safe. Its consumer group (named after the filters) commits
each dead-letter partition's position after the batch is acknowledged, so a second run
starts where the first stopped. A crash between publishing and committing re-publishes a
batch, which is harmless: every consumer dedupes on the event's (source, id). Each replayed
message carries a `clm_replay_of` header; a replay skips messages that already carry one
(they failed again after a replay) unless told to include them, so replays never loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeAlias

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from clm_events.deadletter import HEADER_PREFIX, reason_of
from clm_events.producer import Message, Producer
from clm_events.topics import Topics
from clm_ingest import segment_deadletters
from clm_ingest.config import Settings
from clm_ingest.domain.segment import SegmentMapping

REPLAY_HEADER = "clm_replay_of"
FETCH_TIMEOUT_MS = 500
Record: TypeAlias = ConsumerRecord  # of bytes keys and values


@dataclass(frozen=True)
class Filters:
    """Which dead-lettered messages a command applies to; unset fields match everything."""

    reason: str | None = None
    source_topic: str | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    include_replayed: bool = False

    def match(self, record: Record) -> bool:
        info = reason_of(record.headers)
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.from_offset is not None and record.offset < self.from_offset:
            return False
        if self.to_offset is not None and record.offset > self.to_offset:
            return False
        if self.reason is not None and self.reason.lower() not in info.get("reason", "").lower():
            return False
        if self.source_topic is not None and info.get("topic") != self.source_topic:
            return False
        return self.include_replayed or not any(k == REPLAY_HEADER for k, _ in record.headers)

    def digest(self) -> str:
        """Stable short name of the filters: one replay group per distinct replay."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def producer_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The producer's own headers: without the dead-letter and replay marks."""
    return [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX) and k != REPLAY_HEADER]


def replay_messages(
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    place: tuple[str, int, int],
    *,
    topics: Topics,
    mapping: SegmentMapping,
    origin: str,
) -> list[Message]:
    """What a replay of the dead letter at `place` (dead-letter topic, partition, offset)
    publishes: the original message for the inbound topic, marked with where it was
    dead-lettered; for a Segment message, the events it converts to (or a new dead letter).
    `origin` is where it was dead-lettered from."""
    own = producer_headers(headers)
    mark = (REPLAY_HEADER, "/".join(map(str, place)).encode())
    if segment_deadletters.is_segment(own):
        return segment_deadletters.replayed(
            key, value, own, topics=topics, mapping=mapping, origin=origin, replay_of=mark
        )
    return [Message(topic=topics.inbound, key=key, value=value, headers=[*own, mark])]


def replay_record(record: Record, topics: Topics, mapping: SegmentMapping) -> list[Message]:
    return replay_messages(
        record.key,
        record.value or b"",
        record.headers,
        (record.topic, record.partition, record.offset),
        topics=topics,
        mapping=mapping,
        origin=reason_of(record.headers).get("topic", ""),
    )


def describe(record: Record) -> str:
    info = reason_of(record.headers)
    replayed = "\treplayed" if any(k == REPLAY_HEADER for k, _ in record.headers) else ""
    source = f"{info.get('topic', '?')}/{info.get('partition', '?')}/{info.get('offset', '?')}"
    key = record.key.decode("utf-8", "replace") if record.key else "-"
    return (
        f"{record.partition}/{record.offset}\t{source}\t{info.get('group', '-')}\t"
        f"{info.get('at', '-')}\t{key}\t{info.get('reason', '-')}{replayed}"
    )


async def _batches(
    consumer: AIOKafkaConsumer, topic: str, *, from_committed: bool
) -> AsyncIterator[dict[TopicPartition, list[Record]]]:
    """Batches of the topic from the start (or the group's committed positions) until every
    partition is caught up: past the end offset seen at the start, and a fetch came back
    empty (some brokers report the end of a multi-record batch short)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        committed = await consumer.committed(tp) if from_committed else None
        if committed is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    pending = set(tps)
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=FETCH_TIMEOUT_MS)
        batch = {tp: rs for tp, rs in batch.items() if rs}
        if batch:
            yield batch
            continue
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)


async def list_deadletters(
    bootstrap_servers: str, topic: str, filters: Filters, emit: Callable[[str], None]
) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    count = 0
    try:
        async for batch in _batches(consumer, topic, from_committed=False):
            for records in batch.values():
                for r in records:
                    if filters.match(r):
                        emit(describe(r))
                        count += 1
    finally:
        await consumer.stop()
    return count


async def replay_deadletters(
    bootstrap_servers: str,
    topics: Topics,
    filters: Filters,
    *,
    group_id: str,
    dry_run: bool,
    emit: Callable[[str], None],
    idempotent: bool = False,
    mapping: SegmentMapping | None = None,
) -> int:
    """Re-publish the matching messages to the inbound topic; return how many.

    The group's positions advance only after a batch's messages are acknowledged, so an
    interrupted replay resumes (and at worst re-publishes one batch, which consumers dedupe).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    segment = mapping or SegmentMapping()
    # Not even created for a dry run: an unstarted producer warns when collected.
    producer = None if dry_run else Producer(bootstrap_servers, idempotent=idempotent)
    await consumer.start()
    if producer is not None:
        await producer.start()
    count = 0
    try:
        async for batch in _batches(consumer, topics.deadletter, from_committed=True):
            chosen = [r for rs in batch.values() for r in rs if filters.match(r)]
            for r in chosen:
                emit(("would replay " if dry_run else "replayed ") + describe(r))
            count += len(chosen)
            if producer is None:
                continue
            await producer.send_batch(m for r in chosen for m in replay_record(r, topics, segment))
            if batch:
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return count


cli = typer.Typer(
    help="Look at the dead-letter topic and replay messages through the ingest gate.",
    no_args_is_help=True,
)


def _filters(
    reason: str | None,
    source_topic: str | None,
    partition: int | None,
    from_offset: int | None,
    to_offset: int | None,
    include_replayed: bool,
) -> Filters:
    if from_offset is not None and to_offset is not None and from_offset > to_offset:
        raise typer.BadParameter("--from-offset is after --to-offset")
    return Filters(reason, source_topic, partition, from_offset, to_offset, include_replayed)


REASON = typer.Option(None, help="Only messages whose reason contains this (case-insensitive).")
SOURCE_TOPIC = typer.Option(None, help="Only messages dead-lettered from this topic.")
PARTITION = typer.Option(None, help="Only this partition of the dead-letter topic.")
FROM_OFFSET = typer.Option(None, help="Only dead-letter offsets from this one on.")
TO_OFFSET = typer.Option(None, help="Only dead-letter offsets up to this one (inclusive).")
INCLUDE_REPLAYED = typer.Option(
    False, help="Also messages that failed again after an earlier replay."
)


@cli.command("list")
def list_cmd(
    reason: str = REASON,
    source_topic: str = SOURCE_TOPIC,
    partition: int = PARTITION,
    from_offset: int = FROM_OFFSET,
    to_offset: int = TO_OFFSET,
    include_replayed: bool = typer.Option(True, help="Show messages that failed again too."),
) -> None:
    """Print dead-lettered messages: partition/offset, source topic/partition/offset,
    consumer group, when, key and reason (tab-separated)."""
    filters = _filters(reason, source_topic, partition, from_offset, to_offset, include_replayed)
    common = Settings().common
    topics = Topics(common.topic_prefix, common.topic_partitions)
    count = asyncio.run(
        list_deadletters(common.kafka_bootstrap_servers, topics.deadletter, filters, typer.echo)
    )
    typer.echo(f"{count} dead-lettered messages", err=True)


@cli.command("replay")
def replay_cmd(
    reason: str = REASON,
    source_topic: str = SOURCE_TOPIC,
    partition: int = PARTITION,
    from_offset: int = FROM_OFFSET,
    to_offset: int = TO_OFFSET,
    include_replayed: bool = INCLUDE_REPLAYED,
    dry_run: bool = typer.Option(False, help="Print what would be replayed; send nothing."),
    group: str = typer.Option(
        None, help="Consumer group remembering the replay's progress (default: per filters)."
    ),
) -> None:
    """Re-publish matching dead-lettered messages to the inbound topic, where ingest
    validates them again. Running the same replay again sends nothing twice."""
    filters = _filters(reason, source_topic, partition, from_offset, to_offset, include_replayed)
    settings = Settings()
    common = settings.common
    topics = Topics(common.topic_prefix, common.topic_partitions)
    group_id = group or f"{settings.group_id}-replay-{filters.digest()}"
    count = asyncio.run(
        replay_deadletters(
            common.kafka_bootstrap_servers,
            topics,
            filters,
            group_id=group_id,
            dry_run=dry_run,
            emit=typer.echo,
            idempotent=common.kafka_idempotent_producer,
            mapping=SegmentMapping(settings.segment_track_events),
        )
    )
    verb = "would replay" if dry_run else "replayed"
    typer.echo(f"{verb} {count} messages to {topics.inbound} (group {group_id})", err=True)
