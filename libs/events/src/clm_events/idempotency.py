"""Idempotent consumer: remember which events a consumer group applied, in the same
transaction as the state they changed, so a redelivered event changes nothing."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

Key = tuple[str, str]  # (source, id), the CloudEvents identity


async def claim_new(
    session: AsyncSession, table: sa.Table, consumer_group: str, keys: Iterable[Key]
) -> set[Key]:
    """Record the keys as processed and return those that were not recorded before.

    Runs inside the caller's transaction: if it rolls back, the claims roll back with it.
    """
    unique = list(dict.fromkeys(keys))
    if not unique:
        return set()
    stmt = (
        insert(table)
        .values([{"consumer_group": consumer_group, "source": s, "event_id": i} for s, i in unique])
        .on_conflict_do_nothing()
        .returning(table.c.source, table.c.event_id)
    )
    rows = await session.execute(stmt)
    return {(r.source, r.event_id) for r in rows}
