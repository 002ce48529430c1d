"""The consumer runner: getmany batch -> decode -> dedupe + handler in one database
transaction -> dead letters acknowledged -> offsets committed.

Offsets are committed only after everything the batch produced is durable (state and
outbox rows in Postgres, dead letters acknowledged by the broker). A crash anywhere before
that redelivers the batch, and the processed-events table makes the replay change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential, wait_random

from clm_events import metrics
from clm_events.db import is_retryable
from clm_events.deadletter import deadletter_message
from clm_events.envelope import Event, EventValidationError, decode_kafka_record
from clm_events.idempotency import claim_new
from clm_events.privacy import DROPPED, Tombstones, is_privacy
from clm_events.producer import Producer

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord  # of bytes keys and values
T = TypeVar("T")


@dataclass(frozen=True)
class Delivery:
    """One decoded message as a handler sees it."""

    event: Event
    record: Record

    @property
    def key(self) -> tuple[str, str]:
        return (self.event.source, self.event.id)


Handler = Callable[[AsyncSession, Sequence[Delivery]], Awaitable[None]]
Decoder = Callable[[Sequence[tuple[str, bytes]], bytes | None], Event]


class _Abandoned(Exception):
    """The in-flight batch was given up (stop or rebalance); its offsets stay uncommitted."""


def _transient(exc: BaseException) -> bool:
    # A failed commit means the partitions moved: retrying cannot help (see _commit_offsets).
    if isinstance(exc, (CommitFailedError, IllegalStateError)):
        return False
    return is_retryable(exc) or isinstance(exc, KafkaError)


class ConsumerRunner:
    def __init__(
        self,
        *,
        group_id: str,
        topics: Sequence[str],
        bootstrap_servers: str,
        sessions: async_sessionmaker[AsyncSession],
        processed_table: sa.Table,
        handler: Handler,
        producer: Producer,
        deadletter_topic: str,
        decode: Decoder = decode_kafka_record,
        max_records: int = 500,
        poll_timeout_ms: int = 200,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fetch_max_wait_ms: int = 500,
        revoke_timeout: float = 5.0,
        on_committed: Callable[[], None] | None = None,
        tombstones: Tombstones | None = None,
    ) -> None:
        self.group_id = group_id
        self._tombstones = tombstones
        self._topics = list(topics)
        self._sessions = sessions
        self._processed = processed_table
        self._handler = handler
        self._producer = producer
        self._deadletter_topic = deadletter_topic
        self._decode = decode
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._revoke_timeout = revoke_timeout
        self._on_committed = on_committed
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            # 'latest' can skip (or on some brokers re-deliver) messages; dedupe makes
            # 'earliest' safe for a group that has no committed offsets yet.
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._abandoned = False
        self._stopping = False
        self._positions: dict[TopicPartition, int] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._consumer.subscribe(self._topics, listener=_Listener(self))
        await self._consumer.start()

    async def run(self) -> None:
        """Consume until stop(). Each loop is one batch."""
        while not self._stopping:
            try:
                await self.poll_once()
            except ConsumerStoppedError:
                break
            except Exception:
                # A bug or an unexpected client error must not end consumption silently.
                log.exception(
                    "batch failed; re-reading from the committed offsets",
                    extra={"group": self.group_id},
                )
                await asyncio.sleep(1.0)
                await self._rewind()

    async def stop(self) -> None:
        """Leave the group. An in-flight batch is abandoned, not committed."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self._revoke_timeout)
        except TimeoutError:
            self._abandoned = True
        await self._consumer.stop()

    async def _rewind(self) -> None:
        """Fetch positions run ahead of what was committed; go back so an unfinished batch
        is read again instead of skipped."""
        with contextlib.suppress(KafkaError, IllegalStateError):
            for tp in self._consumer.assignment():
                committed = await self._consumer.committed(tp)
                if committed is None:  # nothing committed yet: 'earliest', as at start
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    # -- one batch -------------------------------------------------------------------

    async def poll_once(self) -> int:
        batch = await self._consumer.getmany(
            timeout_ms=self._poll_timeout_ms, max_records=self._max_records
        )
        self._record_lag()
        if not batch or self._stopping:
            return 0
        self._idle.clear()
        self._abandoned = False
        started = time.perf_counter()
        try:
            count = await self._process(batch)
        except _Abandoned:
            log.warning(
                "batch abandoned before its offsets were committed; it will be "
                "redelivered and deduplicated",
                extra={"group": self.group_id},
            )
            if not self._stopping:
                await self._rewind()
            return 0
        finally:
            self._idle.set()
        metrics.CONSUMER_BATCH_SIZE.labels(self.group_id).observe(count)
        metrics.CONSUMER_BATCH_SECONDS.labels(self.group_id).observe(time.perf_counter() - started)
        return count

    async def _process(self, batch: dict[TopicPartition, list[Record]]) -> int:
        records = [r for rs in batch.values() for r in rs]
        deliveries: list[Delivery] = []
        dead: list[tuple[Record, str, str]] = []  # record, reason, reason kind
        for r in records:
            try:
                deliveries.append(Delivery(self._decode(r.headers, r.value), r))
            except Exception as exc:  # EventValidationError, or input too deep to parse
                # A validation error already says "invalid event: ..."; other errors get it.
                reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
                if not reason.startswith("invalid event"):
                    reason = f"invalid event: {reason}"
                kind = exc.kind if isinstance(exc, EventValidationError) else "invalid_event"
                dead.append((r, reason, kind))

        applied, refused = await self._retrying(lambda: self._apply(deliveries))
        self._count(deliveries, applied, refused)
        dead += [
            (d.record, f"handler error: {type(e).__name__}: {e}", "handler_error")
            for d, e in refused
        ]
        if dead:
            messages = [
                deadletter_message(
                    r, reason=reason, kind=kind, group=self.group_id, topic=self._deadletter_topic
                )
                for r, reason, kind in dead
            ]
            await self._retrying(lambda: self._producer.send_batch(messages))
        if self._on_committed is not None:
            self._on_committed()
        await self._commit_offsets({tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs})
        for r, _, kind in dead:
            metrics.CONSUMER_MESSAGES.labels(self.group_id, r.topic, "deadlettered").inc()
            metrics.DEADLETTERED.labels(self.group_id, r.topic, kind).inc()
        return len(records)

    async def _apply(
        self, deliveries: list[Delivery]
    ) -> tuple[list[Delivery], list[tuple[Delivery, Exception]]]:
        """Apply the batch in one transaction; if the handler refuses it, apply message by
        message so only the message at fault is dead-lettered. Transient errors propagate
        (the caller retries the whole batch; already applied messages are then deduped)."""
        try:
            return await self._transaction(deliveries), []
        except Exception as exc:
            if _transient(exc):
                raise
            if len(deliveries) == 1:
                return [], [(deliveries[0], exc)]
            log.warning(
                "handler refused a batch; isolating the messages at fault",
                exc_info=True,
                extra={"group": self.group_id},
            )
        applied: list[Delivery] = []
        refused: list[tuple[Delivery, Exception]] = []
        for d in deliveries:
            try:
                applied += await self._transaction([d])
            except Exception as exc:
                if _transient(exc):
                    raise
                refused.append((d, exc))
        return applied, refused

    async def _transaction(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Dedupe and handle in one transaction; return the deliveries applied now."""
        if not deliveries:
            return []
        async with self._sessions() as session, session.begin():
            new = await claim_new(
                session, self._processed, self.group_id, (d.key for d in deliveries)
            )
            fresh: list[Delivery] = []
            for d in deliveries:
                if d.key in new:
                    new.discard(d.key)  # a second copy in the same batch is a duplicate too
                    fresh.append(d)
            if fresh and self._tombstones is not None:
                fresh = await self._drop_erased(session, fresh)
            if fresh:
                await self._handler(session, fresh)
        return fresh

    async def _drop_erased(self, session: AsyncSession, fresh: list[Delivery]) -> list[Delivery]:
        """Events of an erased customer leave nothing behind (they stay claimed: a replay
        of one is a duplicate too)."""
        assert self._tombstones is not None
        subjects = {d.event.subject for d in fresh if not is_privacy(d.event)}
        erased = await self._tombstones.erased(session, subjects)
        if not erased:
            return fresh
        kept = [d for d in fresh if is_privacy(d.event) or d.event.subject not in erased]
        for d in fresh:
            if d.event.subject in erased and not is_privacy(d.event):
                DROPPED.labels(self.group_id, d.record.topic).inc()
        return kept

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._retrying(lambda: self._commit(offsets))
        except (CommitFailedError, IllegalStateError):
            # Partitions moved to another member meanwhile: it re-reads from the last
            # committed offset and the processed-events table absorbs the repeat.
            log.warning(
                "offsets not committed: partitions were reassigned", extra={"group": self.group_id}
            )
            return
        self._positions.update(offsets)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        owned = self._consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in owned}
        if offsets:
            # Bounded: after a broker reset a commit can otherwise wait forever.
            await asyncio.wait_for(self._consumer.commit(offsets), timeout=30)

    async def _retrying(self, work: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with backoff until they pass or the batch is abandoned."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.2),
            stop=lambda _state: self._abandoned or self._stopping,
            before_sleep=lambda state: self._log_retry(state.outcome),
            retry_error_callback=lambda _state: self._give_up(),
        ):
            with attempt:
                return await work()
        raise AssertionError("unreachable")

    def _log_retry(self, outcome: Any) -> None:
        metrics.CONSUMER_RETRIES.labels(self.group_id).inc()
        log.warning(
            "transient failure; retrying the batch without committing offsets",
            extra={"group": self.group_id, "error": repr(outcome.exception())},
        )

    def _give_up(self) -> Any:
        raise _Abandoned()

    # -- metrics ---------------------------------------------------------------------

    def _count(
        self,
        deliveries: list[Delivery],
        applied: list[Delivery],
        refused: list[tuple[Delivery, Exception]],
    ) -> None:
        g, now = self.group_id, datetime.now(UTC)
        applied_ids, refused_ids = {id(d) for d in applied}, {id(d) for d, _ in refused}
        # One labels() lookup per topic, not per message: it cost as much as the rest of a
        # no-op batch.
        counts: Counter[tuple[str, str]] = Counter()
        latency: dict[str, Any] = {}
        for d in deliveries:
            topic = d.record.topic
            if id(d) in applied_ids:
                counts[(topic, "applied")] += 1
                histogram = latency.get(topic)
                if histogram is None:
                    histogram = latency[topic] = metrics.EVENT_LATENCY.labels(g, topic)
                histogram.observe(max(0.0, (now - d.event.time).total_seconds()))
            elif id(d) not in refused_ids:
                counts[(topic, "duplicate")] += 1
        for (topic, outcome), n in counts.items():
            metrics.CONSUMER_MESSAGES.labels(g, topic, outcome).inc(n)

    def _record_lag(self) -> None:
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                metrics.CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(
                    max(0, high - position)
                )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move, let the in-flight batch finish and commit, up to a bound;
    past it, abandon the batch (uncommitted, so the next owner re-reads it)."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        r = self._runner
        try:
            await asyncio.wait_for(r._idle.wait(), timeout=r._revoke_timeout)
        except TimeoutError:
            r._abandoned = True
        for tp in revoked:
            r._positions.pop(tp, None)
            metrics.forget_partition(r.group_id, tp.topic, tp.partition)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned",
            extra={
                "group": self._runner.group_id,
                "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            },
        )
