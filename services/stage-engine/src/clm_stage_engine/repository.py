"""Every SQL statement of the stage engine. Callers own the transaction."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession

from clm_stage_engine.models import customers, lifecycle_models, outbox, transitions

_MODEL_LOCK = zlib.crc32(b"clm-stage-engine:lifecycle-model")


# -- lifecycle models ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    version: int
    spec: dict[str, Any]
    created_by: str | None
    created_at: datetime


async def latest_model_version(session: AsyncSession) -> int | None:
    version = await session.scalar(sa.select(sa.func.max(lifecycle_models.c.version)))
    return int(version) if version is not None else None


async def get_model(session: AsyncSession, version: int | None = None) -> ModelRow | None:
    m = lifecycle_models
    query = sa.select(m).order_by(m.c.version.desc()).limit(1)
    if version is not None:
        query = sa.select(m).where(m.c.version == version)
    row = (await session.execute(query)).first()
    return ModelRow(row.version, row.spec, row.created_by, row.created_at) if row else None


async def list_models(session: AsyncSession) -> list[ModelRow]:
    m = lifecycle_models
    rows = await session.execute(sa.select(m).order_by(m.c.version.desc()))
    return [ModelRow(r.version, r.spec, r.created_by, r.created_at) for r in rows]


async def ensure_model(session: AsyncSession, spec: dict[str, Any]) -> None:
    """Store `spec` as version 1 if no model exists yet."""
    await session.execute(
        insert(lifecycle_models)
        .values(version=1, spec=spec, created_by="default")
        .on_conflict_do_nothing()
    )


async def add_model(session: AsyncSession, spec: dict[str, Any], created_by: str) -> int:
    """Store a new version; concurrent writers are serialised so versions never collide."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_MODEL_LOCK)))
    version = int(await latest_model_version(session) or 0) + 1
    await session.execute(
        lifecycle_models.insert().values(version=version, spec=spec, created_by=created_by)
    )
    return version


# -- customers -----------------------------------------------------------------------


@dataclass
class CustomerRow:
    customer_id: str
    stage: str | None
    stage_since: datetime | None
    evaluated_until: datetime | None
    due_at: datetime | None
    model_version: int
    clv: float | None
    churn_probability: float | None
    latest_nps: int | None
    timeline: bytes


Stored = dict[str, tuple[bytes, datetime | None]]  # customer -> (timeline, evaluated_until)


async def lock_customers(session: AsyncSession, ids: Sequence[str]) -> Stored:
    """Timelines of these customers (those that exist), locked for this transaction.
    Locked in key order so two writers never deadlock."""
    c = customers
    rows = await session.execute(
        sa.select(c.c.customer_id, c.c.timeline, c.c.evaluated_until)
        .where(c.c.customer_id.in_(sorted(ids)))
        .order_by(c.c.customer_id)
        .with_for_update()
    )
    return {r.customer_id: (r.timeline, r.evaluated_until) for r in rows}


async def claim_due(session: AsyncSession, now: datetime, limit: int) -> Stored:
    """Up to `limit` customers whose timer is due, locked; rows another replica holds are
    skipped, so replicas share the sweep."""
    c = customers
    rows = await session.execute(
        sa.select(c.c.customer_id, c.c.timeline, c.c.evaluated_until)
        .where(c.c.due_at <= now)
        .order_by(c.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return {r.customer_id: (r.timeline, r.evaluated_until) for r in rows}


async def claim_outdated(session: AsyncSession, version: int, limit: int) -> Stored:
    """Up to `limit` customers last evaluated under an older model version, locked."""
    c = customers
    rows = await session.execute(
        sa.select(c.c.customer_id, c.c.timeline, c.c.evaluated_until)
        .where(c.c.model_version < version)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return {r.customer_id: (r.timeline, r.evaluated_until) for r in rows}


_UPDATED = ("stage", "stage_since", "evaluated_until", "due_at", "clv", "churn_probability")


async def save_customers(
    session: AsyncSession, rows: Sequence[CustomerRow], *, set_model_version: bool = False
) -> None:
    """Insert or update customers. An existing customer keeps its model version unless
    `set_model_version` (the model-change sweep): events and ticks do not re-evaluate
    them under a new model as a whole."""
    if not rows:
        return
    stmt = insert(customers)
    names = [*_UPDATED, "latest_nps", "timeline"]
    if set_model_version:
        names.append("model_version")
    stmt = stmt.on_conflict_do_update(
        index_elements=[customers.c.customer_id],
        set_={name: stmt.excluded[name] for name in names} | {"updated_at": sa.func.now()},
    )
    await session.execute(stmt, [r.__dict__ for r in rows])


async def save_clocks(
    session: AsyncSession, clocks: Sequence[tuple[str, datetime | None, datetime | None]]
) -> None:
    """(customer, evaluated_until, due_at) of customers whose inputs and history did not
    change: the timeline blob is left alone."""
    if not clocks:
        return
    c = customers
    stmt = (
        c.update()
        .where(c.c.customer_id == sa.bindparam("cid"))
        .values(
            evaluated_until=sa.bindparam("until"),
            due_at=sa.bindparam("due"),
            updated_at=sa.func.now(),
        )
    )
    await session.execute(stmt, [{"cid": cid, "until": u, "due": d} for cid, u, d in clocks])


async def mark_model_version(session: AsyncSession, ids: Sequence[str], version: int) -> None:
    c = customers
    await session.execute(
        c.update().where(c.c.customer_id.in_(list(ids))).values(model_version=version)
    )


async def get_customer(session: AsyncSession, customer_id: str) -> Any:
    c = customers
    return (await session.execute(sa.select(c).where(c.c.customer_id == customer_id))).first()


# -- transitions ---------------------------------------------------------------------


async def replace_transitions(
    session: AsyncSession, truncate: Sequence[tuple[str, int]], rows: Sequence[dict[str, Any]]
) -> None:
    """Drop each (customer, from position) tail, then insert the new rows."""
    t = transitions
    if truncate:
        await session.execute(
            t.delete().where(
                t.c.customer_id == sa.bindparam("cid"), t.c.position >= sa.bindparam("pos")
            ),
            [{"cid": cid, "pos": pos} for cid, pos in truncate],
        )
    if rows:
        await session.execute(t.insert(), list(rows))


async def add_outbox(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(outbox.insert(), list(rows))


async def list_transitions(
    session: AsyncSession, customer_id: str, limit: int, offset: int
) -> list[Any]:
    t = transitions
    rows = await session.execute(
        sa.select(t)
        .where(t.c.customer_id == customer_id)
        .order_by(t.c.position)
        .limit(limit)
        .offset(offset)
    )
    return list(rows)


# -- statistics ----------------------------------------------------------------------


async def stage_counts(session: AsyncSession) -> dict[str, int]:
    c = customers
    rows = await session.execute(
        sa.select(c.c.stage, sa.func.count()).where(c.c.stage.is_not(None)).group_by(c.c.stage)
    )
    return {r[0]: int(r[1]) for r in rows}


async def flows(
    session: AsyncSession, start: datetime, end: datetime
) -> list[tuple[str | None, str, int]]:
    t = transitions
    rows = await session.execute(
        sa.select(t.c.from_stage, t.c.to_stage, sa.func.count())
        .where(t.c.at >= start, t.c.at < end)
        .group_by(t.c.from_stage, t.c.to_stage)
        .order_by(sa.func.count().desc(), t.c.from_stage, t.c.to_stage)
    )
    return [(r[0], r[1], int(r[2])) for r in rows]


def _stage_at(moment: datetime) -> sa.Subquery:
    """Each customer's stage at `moment`: the target of their last transition by then."""
    t = transitions
    return (
        sa.select(t.c.customer_id, t.c.to_stage.label("stage"))
        .where(t.c.at <= moment)
        .ext(distinct_on(t.c.customer_id))
        .order_by(t.c.customer_id, t.c.at.desc(), t.c.position.desc())
        .subquery()
    )


async def stages_at(session: AsyncSession, moment: datetime) -> dict[str, int]:
    s = _stage_at(moment)
    rows = await session.execute(sa.select(s.c.stage, sa.func.count()).group_by(s.c.stage))
    return {r[0]: int(r[1]) for r in rows}


async def retained(
    session: AsyncSession, start: datetime, end: datetime, customer_stages: Sequence[str]
) -> tuple[int, int]:
    """(customers in a customer stage at `start`, of those still in one at `end`)."""
    a, b = _stage_at(start), _stage_at(end)
    row = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.count().filter(b.c.stage.in_(customer_stages)))
            .select_from(a.join(b, a.c.customer_id == b.c.customer_id))
            .where(a.c.stage.in_(customer_stages))
        )
    ).one()
    return int(row[0]), int(row[1])


async def moved(
    session: AsyncSession, start: datetime, end: datetime, from_stages: Sequence[str], to: str
) -> int:
    """Customers with at least one transition from one of `from_stages` to `to` in the window."""
    t = transitions
    return int(
        await session.scalar(
            sa.select(sa.func.count(sa.distinct(t.c.customer_id))).where(
                t.c.at >= start, t.c.at < end, t.c.from_stage.in_(from_stages), t.c.to_stage == to
            )
        )
        or 0
    )


async def entered(session: AsyncSession, start: datetime, end: datetime, stage: str) -> int:
    """Customers who were in `stage` at some point of the window (at its start, or moved in)."""
    t = transitions
    s = _stage_at(start)
    at_start = sa.select(s.c.customer_id).where(s.c.stage == stage)
    moved_in = sa.select(t.c.customer_id).where(
        t.c.at >= start, t.c.at < end, t.c.to_stage == stage
    )
    union = sa.union(at_start, moved_in).subquery()
    return int(await session.scalar(sa.select(sa.func.count()).select_from(union)) or 0)


async def clv_by_stage(session: AsyncSession) -> dict[str, float]:
    c = customers
    rows = await session.execute(
        sa.select(c.c.stage, sa.func.avg(c.c.clv))
        .where(c.c.stage.is_not(None), c.c.clv.is_not(None))
        .group_by(c.c.stage)
    )
    return {r[0]: float(r[1]) for r in rows}


async def nps_counts(session: AsyncSession) -> tuple[int, int, int]:
    """(responses, promoters 9-10, detractors 0-6) over customers' latest NPS."""
    c = customers
    row = (
        await session.execute(
            sa.select(
                sa.func.count(c.c.latest_nps),
                sa.func.count().filter(c.c.latest_nps >= 9),
                sa.func.count().filter(c.c.latest_nps <= 6),
            )
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def timer_backlog(session: AsyncSession, now: datetime) -> tuple[int, datetime | None]:
    c = customers
    row = (
        await session.execute(
            sa.select(sa.func.count(), sa.func.min(c.c.due_at)).where(c.c.due_at <= now)
        )
    ).one()
    return int(row[0]), row[1]
