"""Every SQL statement of ingest (the dead-letter store's are in deadletter_store.py)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from clm_ingest.domain.identity import Facts
from clm_ingest.models import deadletters, erasure_requests, identities, outbox


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


# -- privacy ---------------------------------------------------------------------------


def _carrying(ids: Sequence[str]) -> sa.ColumnElement[bool]:
    """Dead letters that carry one of `ids`: as their key, as a header value (a binary-mode
    subject), or anywhere in their bytes as a JSON string (subject, userId, anonymousId,
    a data field). Dead letters may be invalid JSON, so this searches bytes, not fields."""
    d = deadletters
    keys = sa.bindparam("dl_keys", [i.encode() for i in ids], type_=ARRAY(sa.LargeBinary))
    needles = [json.dumps(i).encode() for i in ids]
    header = sa.func.jsonb_array_elements(d.c.headers).table_valued("value").alias("h")
    in_header = (
        sa.select(1)
        .select_from(header)
        .where(sa.func.decode(header.c.value.op("->>")(1), "base64") == sa.any_(keys))
        .exists()
    )
    in_bytes = sa.or_(*(sa.func.position(sa.literal(n).op("in")(d.c.value)) > 0 for n in needles))
    return sa.or_(d.c.key == sa.any_(keys), in_header, in_bytes)


async def erase(session: AsyncSession, ids: list[str]) -> dict[str, int]:
    """Ingest's part of an erasure: the dead letters carrying the ids and their links."""
    i = identities
    gone_dl = await session.execute(deadletters.delete().where(_carrying(ids)))
    gone_links = await session.execute(
        i.delete().where(sa.or_(i.c.customer_id.in_(ids), i.c.anonymous_id.in_(ids)))
    )
    return {
        "deadletters": gone_dl.rowcount or 0,  # type: ignore[attr-defined]
        "identities": gone_links.rowcount or 0,  # type: ignore[attr-defined]
    }


async def deadletters_of(session: AsyncSession, ids: list[str]) -> list[sa.Row[Any]]:
    rows = await session.execute(
        sa.select(deadletters).where(_carrying(ids)).order_by(deadletters.c.at)
    )
    return list(rows)


async def record_erasure_request(
    session: AsyncSession, request_id: str, *, requested_by: str, selector: str, ids: int
) -> sa.Row[Any]:
    r = erasure_requests
    result = await session.execute(
        r.insert()
        .values(request_id=request_id, requested_by=requested_by, selector=selector, ids=ids)
        .returning(*r.c)
    )
    row: sa.Row[Any] = result.one()
    return row


async def record_erasure_done(
    session: AsyncSession,
    request_id: str,
    service: str,
    erased: dict[str, int],
    expected: Sequence[str],
) -> None:
    """Note one service's completion; the request is complete once every expected one is."""
    r = erasure_requests
    entry = sa.func.jsonb_build_object(
        "completed_at",
        sa.func.now(),
        "erased",
        sa.cast(sa.bindparam("erased", erased, type_=JSONB), JSONB),
    )
    services = r.c.services.op("||")(sa.func.jsonb_build_object(service, entry))
    done = sa.func.jsonb_exists_all(
        services, sa.bindparam("expected", list(expected), ARRAY(sa.Text))
    )
    await session.execute(
        r.update()
        .where(r.c.request_id == request_id)
        .values(
            services=services,
            completed_at=sa.case((done, sa.func.coalesce(r.c.completed_at, sa.func.now()))),
        )
    )


async def erasure_request(session: AsyncSession, request_id: str) -> sa.Row[Any] | None:
    r = erasure_requests
    return (await session.execute(sa.select(r).where(r.c.request_id == request_id))).first()


async def erasure_requests_page(
    session: AsyncSession, limit: int, before: str | None
) -> list[sa.Row[Any]]:
    """Newest first; `before` is the request id the previous page ended with."""
    r = erasure_requests
    q = sa.select(r).order_by(r.c.requested_at.desc(), r.c.request_id.desc()).limit(limit)
    if before is not None:
        last = sa.select(r.c.requested_at, r.c.request_id).where(r.c.request_id == before)
        q = q.where(sa.tuple_(r.c.requested_at, r.c.request_id) < last.scalar_subquery())
    return list(await session.execute(q))
