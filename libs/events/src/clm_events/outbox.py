"""Transactional outbox: services write derived events next to their state; a relay
publishes them in order per key and marks them published.

At-least-once: a crash after the broker acknowledged but before the rows were marked
publishes them again, with the same CloudEvent ids, and consumers dedupe on those.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events import metrics
from clm_events.envelope import CloudEvent, encode_structured
from clm_events.producer import Message, Producer

log = logging.getLogger(__name__)

CONTENT_TYPE = ("content-type", b"application/cloudevents+json")


async def add_event(session: AsyncSession, table: sa.Table, topic: str, event: CloudEvent) -> None:
    """Queue a CloudEvent for `topic`, keyed by its subject (the customer id)."""
    await add_events(session, table, topic, [event])


async def add_events(
    session: AsyncSession, table: sa.Table, topic: str, events: Sequence[CloudEvent]
) -> None:
    """Queue many CloudEvents in one statement (a batch or a sweep can derive thousands)."""
    if not events:
        return
    headers = [[CONTENT_TYPE[0], _text(CONTENT_TYPE[1])]]
    await session.execute(
        table.insert(),
        [
            {
                "topic": topic,
                "key": e.subject.encode(),
                "value": encode_structured(e),
                "headers": headers,
                "event_id": e.id,
            }
            for e in events
        ],
    )


async def add_message(session: AsyncSession, table: sa.Table, message: Message) -> None:
    """Queue an already encoded message (e.g. a validated event routed as it came)."""
    await session.execute(
        table.insert().values(
            topic=message.topic,
            key=message.key,
            value=message.value,
            headers=[[k, _text(v)] for k, v in message.headers],
        )
    )


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


class OutboxRelay:
    """Publishes unpublished outbox rows in id order.

    One relay at a time per outbox (a transaction-scoped advisory lock): with several
    replicas, two relays splitting rows could publish a customer's later event first.
    """

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        table: sa.Table,
        producer: Producer,
        service: str,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        retention: timedelta = timedelta(hours=1),
    ) -> None:
        self._sessions = sessions
        self._table = table
        self._producer = producer
        self._service = service
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retention = retention
        self._lock_id = zlib.crc32(f"clm-outbox:{table.fullname}".encode())
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_housekeeping = 0.0

    def wake(self) -> None:
        """Publish now instead of at the next poll (called after a commit wrote rows)."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """One pass: publish up to a batch of rows; return how many were published."""
        t = self._table
        async with self._sessions() as session, session.begin():
            locked = await session.scalar(
                sa.select(sa.func.pg_try_advisory_xact_lock(self._lock_id))
            )
            if not locked:
                return 0
            rows = (
                await session.execute(
                    sa.select(t.c.id, t.c.topic, t.c.key, t.c.value, t.c.headers)
                    .where(t.c.published_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self._batch_size)
                )
            ).all()
            if not rows:
                return 0
            await self._producer.send_batch(
                Message(
                    topic=r.topic,
                    key=r.key,
                    value=r.value,
                    headers=[(k, v.encode()) for k, v in r.headers],
                )
                for r in rows
            )
            await self._mark_published(session, [r.id for r in rows])
        for r in rows:
            metrics.OUTBOX_PUBLISHED.labels(self._service, r.topic).inc()
        return len(rows)

    async def _mark_published(self, session: AsyncSession, ids: list[int]) -> None:
        t = self._table
        await session.execute(t.update().where(t.c.id.in_(ids)).values(published_at=sa.func.now()))

    async def housekeeping(self) -> None:
        """Update the backlog gauges and drop rows published longer ago than the retention."""
        t = self._table
        async with self._sessions() as session, session.begin():
            backlog, age = (
                await session.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.extract("epoch", sa.func.now() - sa.func.min(t.c.created_at)),
                    ).where(t.c.published_at.is_(None))
                )
            ).one()
            retention = sa.bindparam("retention", self._retention, type_=sa.Interval)
            await session.execute(t.delete().where(t.c.published_at < sa.func.now() - retention))
        metrics.OUTBOX_BACKLOG.labels(self._service).set(backlog)
        metrics.OUTBOX_OLDEST_AGE.labels(self._service).set(float(age or 0))

    async def run(self) -> None:
        """Publish until stopped; errors (broker or database away) are retried with backoff."""
        backoff = self._poll_interval
        while not self._stopping:
            try:
                published = await self.publish_pending()
                if time.monotonic() - self._last_housekeeping > 5:
                    self._last_housekeeping = time.monotonic()
                    await self.housekeeping()
                backoff = self._poll_interval
            except Exception:
                log.warning("outbox relay pass failed; retrying", exc_info=True)
                published = 0
                backoff = min(backoff * 2, 10.0)
            if published >= self._batch_size:
                continue  # more waiting: go again at once
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
