"""Every SQL statement of ingest (the dead-letter store's are in deadletter_store.py)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from clm_ingest.domain.identity import Facts
from clm_ingest.models import identities, outbox


async def queue_routed(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Queue validated events for their domain topics: one bulk insert per batch."""
    if rows:
        await session.execute(outbox.insert(), list(rows))


# One array parameter for any number of ids: one cached statement for every request.
_CUSTOMERS_OF = sa.select(identities.c.anonymous_id, identities.c.customer_id).where(
    identities.c.anonymous_id == sa.func.any(sa.bindparam("ids", type_=ARRAY(sa.Text)))
)


async def customers_of(session: AsyncSession, ids: Collection[str]) -> dict[str, str]:
    """The customer each of `ids` is linked to, for those linked."""
    if not ids:
        return {}
    rows = await session.execute(_CUSTOMERS_OF, {"ids": list(ids)})
    return {r.anonymous_id: r.customer_id for r in rows}


async def link_facts(session: AsyncSession, anonymous_id: str, customer_id: str) -> Facts:
    """What the graph holds about linking `anonymous_id` to `customer_id`, in one query."""
    linked_to = sa.select(identities.c.customer_id).where(identities.c.anonymous_id == anonymous_id)
    has_linked_ids = sa.exists().where(identities.c.customer_id == anonymous_id)
    absorbed = (
        sa.select(sa.func.count())
        .select_from(identities)
        .where(identities.c.customer_id == customer_id)
    )
    row = (
        await session.execute(
            sa.select(linked_to.scalar_subquery(), has_linked_ids, absorbed.scalar_subquery())
        )
    ).one()
    return Facts(linked_to=row[0], has_linked_ids=bool(row[1]), absorbed=int(row[2]))


async def insert_link(
    session: AsyncSession, anonymous_id: str, customer_id: str, *, source: str, event_id: str
) -> bool:
    """Record the link; False if the anonymous id got linked meanwhile (the primary key
    makes a concurrent second link wait for the first and then do nothing)."""
    result = await session.execute(
        insert(identities)
        .values(
            anonymous_id=anonymous_id, customer_id=customer_id, source=source, event_id=event_id
        )
        .on_conflict_do_nothing()
        .returning(identities.c.anonymous_id)
    )
    return result.first() is not None


async def identity_of(session: AsyncSession, some_id: str) -> tuple[str, list[sa.Row[Any]]]:
    """The customer `some_id` counts for (itself unless linked) and that customer's links."""
    linked_to = (
        await session.execute(
            sa.select(identities.c.customer_id).where(identities.c.anonymous_id == some_id)
        )
    ).scalar_one_or_none()
    customer = linked_to or some_id
    rows = await session.execute(
        sa.select(identities)
        .where(identities.c.customer_id == customer)
        .order_by(identities.c.linked_at, identities.c.anonymous_id)
    )
    return customer, list(rows)
