"""Erasure plumbing every service shares (docs/operations.md, "Privacy").

- Tombstones: a service remembers the ids it erased as keyed hashes (HMAC-SHA256), never
  the ids, for a configurable period; its consumers drop every event whose subject is
  one of them, so events still in flight or replayed later (from a topic or from the
  dead-letter store) leave nothing behind.
- The erasure lock: an erasure takes a transaction-scoped advisory lock exclusively, and
  every transaction that writes customer data takes it shared first (the consumer runner
  does for each batch; timers and jobs call `Tombstones.guard`). A writer that started
  before the erasure then commits before it and is erased with the rest; one that
  starts after it sees the tombstones.
- The erasure step: bury the ids, erase the service's rows, drop outbox rows keyed by the
  ids, queue `privacy.erasure_completed`, all in one transaction that the consumer runner
  runs once per request (it dedupes the request's event id like any other).
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.catalog import EventType
from clm_events.envelope import CloudEvent, Event, PrivacyErasureRequestedEvent, new_event
from clm_events.outbox import add_event
from clm_events.settings import ClmSettings

if TYPE_CHECKING:
    from clm_events.consumer import Delivery

# What a service erases for a request: its rows of these ids, in the caller's
# transaction; returns rows erased (or anonymised) per table, for the audit record.
Erase = Callable[[AsyncSession, list[str]], Awaitable[dict[str, int]]]

ERASURES = Counter(
    "clm_privacy_erasures_total", "Erasure requests a service carried out.", ["service"]
)
DROPPED = Counter(
    "clm_privacy_dropped_events_total",
    "Events dropped on arrival because their customer was erased.",
    ["group", "topic"],
)


def tombstones_table(metadata: sa.MetaData) -> sa.Table:
    """The keyed hashes of the ids a service erased, and until when they are dropped."""
    return sa.Table(
        "privacy_tombstones",
        metadata,
        sa.Column("id_hash", sa.LargeBinary, primary_key=True),
        sa.Column(
            "erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_privacy_tombstones_expires_at", "expires_at"),
    )


def is_privacy(event: CloudEvent) -> bool:
    """Requests and completions are never dropped: erasing an id twice must still finish."""
    return event.type.startswith("privacy.")


@dataclass(frozen=True)
class Tombstones:
    table: sa.Table
    key: bytes
    retention: timedelta

    @property
    def _lock(self) -> int:
        return zlib.crc32(f"clm-privacy:{self.table.fullname}".encode())

    @classmethod
    def of(cls, table: sa.Table, common: ClmSettings) -> Tombstones:
        """As every service process builds them: the same key finds the same hashes."""
        key = common.privacy_hash_key.get_secret_value().encode()
        return cls(table, key, timedelta(days=common.privacy_tombstone_days))

    def hash(self, customer_id: str) -> bytes:
        return hmac.new(self.key, customer_id.encode(), hashlib.sha256).digest()

    async def guard(self, session: AsyncSession) -> None:
        """Before writing customer data: wait for an erasure in progress to commit."""
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(self._lock)))

    async def erased(self, session: AsyncSession, ids: Iterable[str]) -> set[str]:
        """Of `ids`, those erased (and not yet expired). Takes the guard first, in its own
        statement: one snapshot for both would miss an erasure it waited for."""
        by_hash = {self.hash(i): i for i in ids}
        if not by_hash:
            return set()  # nothing written for anyone: no guard needed (an erasure's own
            # consumer must not hold it shared before taking it exclusively)
        await self.guard(session)
        t = self.table
        rows = await session.execute(
            sa.select(t.c.id_hash).where(
                t.c.id_hash == sa.func.any(sa.bindparam("h", type_=ARRAY(sa.LargeBinary))),
                t.c.expires_at > sa.func.now(),
            ),
            {"h": list(by_hash)},
        )
        return {by_hash[r.id_hash] for r in rows}

    async def bury(self, session: AsyncSession, ids: Sequence[str]) -> None:
        """Take the erasure lock, remember `ids` (as hashes) and forget expired ones."""
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock(self._lock)))
        t = self.table
        await session.execute(t.delete().where(t.c.expires_at <= sa.func.now()))
        expires = sa.func.now() + sa.bindparam("keep", self.retention, type_=sa.Interval)
        stmt = insert(t).values([{"id_hash": self.hash(i), "expires_at": expires} for i in ids])
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.c.id_hash], set_={"expires_at": stmt.excluded.expires_at}
            )
        )


def completed_event(service: str, request_id: str, erased: dict[str, int]) -> Event:
    return new_event(
        EventType.PRIVACY_ERASURE_COMPLETED,
        id=f"{request_id}:{service}",  # one completion per service and request
        source=f"clm/{service}",
        subject=request_id,
        data={"request_id": request_id, "service": service, "erased": erased},
    )


async def erase_customers(
    session: AsyncSession,
    event: PrivacyErasureRequestedEvent,
    *,
    service: str,
    tombstones: Tombstones,
    outbox: sa.Table,
    topic: str,
    erase: Erase,
) -> dict[str, int]:
    """Carry out one `privacy.erasure_requested` in the caller's transaction."""
    ids = list(dict.fromkeys(event.data.customer_ids))
    await tombstones.bury(session, ids)
    counts = await erase(session, ids)
    # Derived messages about the person not yet published are dropped with the rest;
    # published ones would stay for the relay's retention.
    keys = sa.bindparam("keys", [i.encode() for i in ids], type_=ARRAY(sa.LargeBinary))
    gone = await session.execute(outbox.delete().where(outbox.c.key == sa.any_(keys)))
    counts["outbox"] = gone.rowcount or 0  # type: ignore[attr-defined]
    await add_event(session, outbox, topic, completed_event(service, event.data.request_id, counts))
    ERASURES.labels(service).inc()
    return counts


def erasure_handler(
    *, service: str, tombstones: Tombstones, outbox: sa.Table, topic: str, erase: Erase
) -> Callable[[AsyncSession, Sequence[Delivery]], Awaitable[None]]:
    """The consumer handler of a service's `clm.privacy` group: every erasure request in
    the batch, in order; completions (other services') are not its business."""

    async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if isinstance(d.event, PrivacyErasureRequestedEvent):
                await erase_customers(
                    session,
                    d.event,
                    service=service,
                    tombstones=tombstones,
                    outbox=outbox,
                    topic=topic,
                    erase=erase,
                )

    return handle
