"""Every SQL statement of the stage engine. Callers own the transaction."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from clm_stage_engine.domain.inputs import to_us
from clm_stage_engine.models import (
    customers,
    erased_transitions,
    identity_links,
    inputs,
    lifecycle_models,
    outbox,
    transitions,
)

_MODEL_LOCK = zlib.crc32(b"clm-stage-engine:lifecycle-model")


# -- lifecycle models ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    version: int
    spec: dict[str, Any]
    created_by: str | None
    created_at: datetime
    score_model: dict[str, Any] | None = None  # ServedModel.to_json, None before any

    @classmethod
    def of(cls, row: Any) -> ModelRow:
        return cls(row.version, row.spec, row.created_by, row.created_at, row.score_model)


async def latest_model_version(session: AsyncSession) -> int | None:
    version = await session.scalar(sa.select(sa.func.max(lifecycle_models.c.version)))
    return int(version) if version is not None else None


async def get_model(session: AsyncSession, version: int | None = None) -> ModelRow | None:
    m = lifecycle_models
    query = sa.select(m).order_by(m.c.version.desc()).limit(1)
    if version is not None:
        query = sa.select(m).where(m.c.version == version)
    row = (await session.execute(query)).first()
    return ModelRow.of(row) if row else None


async def list_models(session: AsyncSession) -> list[ModelRow]:
    m = lifecycle_models
    rows = await session.execute(sa.select(m).order_by(m.c.version.desc()))
    return [ModelRow.of(r) for r in rows]


async def ensure_model(session: AsyncSession, spec: dict[str, Any]) -> None:
    """Store `spec` as version 1 if no model exists yet."""
    await session.execute(
        insert(lifecycle_models)
        .values(version=1, spec=spec, created_by="default")
        .on_conflict_do_nothing()
    )


async def add_model(
    session: AsyncSession,
    created_by: str,
    *,
    spec: dict[str, Any] | None = None,
    score_model: dict[str, Any] | None = None,
) -> int:
    """Store a new version with a new spec or a new score model, the other carried over
    from the latest version. Concurrent writers are serialised so versions never collide."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_MODEL_LOCK)))
    latest = await get_model(session)
    version = (latest.version if latest else 0) + 1
    await session.execute(
        lifecycle_models.insert().values(
            version=version,
            spec=spec if spec is not None else (latest.spec if latest else None),
            score_model=score_model
            if score_model is not None
            else (latest.score_model if latest else None),
            created_by=created_by,
        )
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
    settle_until: datetime | None = None  # the timer leaves the customer alone until then


Stored = dict[str, tuple[bytes, datetime | None]]  # customer -> (timeline, evaluated_until)


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside the session's transaction. Bulk
    writes go straight to it as one statement over arrays (`unnest`): SQLAlchemy's
    executemany costs more per row than the rest of the work."""
    conn = await session.connection()
    driver: Any = (await conn.get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        await conn.execute(sa.text("SELECT 1"))  # SQLAlchemy sends BEGIN with its first statement
    return driver


async def lock_customers(session: AsyncSession, ids: Sequence[str]) -> Stored:
    """Timelines of these customers (those that exist), locked for this transaction.
    Locked in key order so two writers never deadlock."""
    rows = await (await _driver(session)).fetch(_LOCK_CUSTOMERS, sorted(ids))
    return {r[0]: (r[1], r[2]) for r in rows}


_LOCK_CUSTOMERS = (
    f"SELECT customer_id, timeline, evaluated_until FROM {customers.fullname} "
    "WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE"
)


async def load_inputs(session: AsyncSession, ids: Sequence[str]) -> dict[str, list[bytes]]:
    """The stored inputs (JSON) of these customers, in no particular order."""
    rows = await (await _driver(session)).fetch(_LOAD_INPUTS, list(ids))
    found: dict[str, list[bytes]] = {}
    for customer_id, raw in rows:
        found.setdefault(customer_id, []).append(raw)
    return found


_LOAD_INPUTS = (
    f"SELECT customer_id, input FROM {inputs.fullname} WHERE customer_id = ANY($1::text[])"
)


async def add_inputs(
    session: AsyncSession, rows: Sequence[tuple[str, str, str, int, bytes]]
) -> None:
    """(customer, source, id, at µs, input JSON) of inputs not stored before. An input
    whose (source, id) is already stored (the same id at another time: a producer bug,
    which an in-order event is not checked for) refuses the batch, naming it, so the
    consumer dead-letters that event and stored inputs and fold stay in step."""
    if not rows:
        return
    columns = [list(c) for c in zip(*rows, strict=True)]
    stored = await (await _driver(session)).fetch(_ADD_INPUTS, *columns)
    if len(stored) < len(rows):
        new = {(r[0], r[1], r[2]) for r in stored}
        customer, source, event_id = next(r[:3] for r in rows if r[:3] not in new)
        raise ValueError(
            f"event {event_id!r} from {source!r} for customer {customer!r} was already "
            "applied with another time: an event id must name one event"
        )


_ADD_INPUTS = (
    f"INSERT INTO {inputs.fullname} (customer_id, source, event_id, at, input) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bytea[]) "
    "ON CONFLICT DO NOTHING RETURNING customer_id, source, event_id"
)


async def claim_due(
    session: AsyncSession, now: datetime, limit: int, version: int
) -> tuple[Stored, dict[str, int]]:
    """Up to `limit` customers whose timer is due, locked; rows another replica holds are
    skipped, so replicas share the sweep. Also each claimed customer's due time (µs) when
    it was set under model `version`: the ticks before it need no evaluation."""
    rows = await (await _driver(session)).fetch(_CLAIM_DUE, now, limit, version)
    quiet = {r[0]: to_us(r[3]) for r in rows if r[3] is not None}
    return {r[0]: (r[1], r[2]) for r in rows}, quiet


_CLAIM_DUE = (
    "SELECT customer_id, timeline, evaluated_until, "
    f"CASE WHEN model_version = $3 THEN due_at END FROM {customers.fullname} "
    "WHERE due_at <= $1 AND (settle_until IS NULL OR settle_until <= $1) "
    "ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED"
)


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


async def mark_outdated(session: AsyncSession, since: int, version: int, limit: int) -> int:
    """Give up to `limit` customers evaluated under a version in [since, version) the
    current `version` without evaluating them (those versions evaluate as it does)."""
    if since >= version or limit <= 0:
        return 0
    c = customers
    claimed = (
        sa.select(c.c.customer_id)
        .where(c.c.model_version >= since, c.c.model_version < version)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(
        c.update().where(c.c.customer_id.in_(claimed)).values(model_version=version)
    )
    return int(cast("CursorResult[Any]", result).rowcount or 0)


async def page_of_customers(session: AsyncSession, after: str, limit: int) -> Stored:
    """Customers after `after` in id order (keyset paging), with their timelines; no lock."""
    c = customers
    rows = await session.execute(
        sa.select(c.c.customer_id, c.c.timeline, c.c.evaluated_until)
        .where(c.c.customer_id > after)
        .order_by(c.c.customer_id)
        .limit(limit)
    )
    return {r.customer_id: (r.timeline, r.evaluated_until) for r in rows}


_CUSTOMER_COLUMNS = (
    ("customer_id", "text"),
    ("stage", "text"),
    ("stage_since", "timestamptz"),
    ("evaluated_until", "timestamptz"),
    ("due_at", "timestamptz"),
    ("model_version", "int"),
    ("clv", "float8"),
    ("churn_probability", "float8"),
    ("latest_nps", "int"),
    ("timeline", "bytea"),
    ("settle_until", "timestamptz"),
)
_UPDATED = ("stage", "stage_since", "evaluated_until", "due_at", "clv", "churn_probability")


def _upsert_customers(set_model_version: bool) -> str:
    names = [*_UPDATED, "latest_nps", "timeline"] + (["model_version"] if set_model_version else [])
    arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(_CUSTOMER_COLUMNS, 1))
    return (
        f"INSERT INTO {customers.fullname} ({', '.join(c for c, _ in _CUSTOMER_COLUMNS)}) "
        f"SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (customer_id) DO UPDATE SET "
        + ", ".join(f"{n} = excluded.{n}" for n in names)
        + f", settle_until = coalesce(excluded.settle_until, {customers.name}.settle_until)"
        + ", updated_at = now()"
    )


_UPSERT_CUSTOMERS = {flag: _upsert_customers(flag) for flag in (False, True)}


async def save_customers(
    session: AsyncSession, rows: Sequence[CustomerRow], *, set_model_version: bool = False
) -> None:
    """Insert or update customers. An existing customer keeps its model version unless
    `set_model_version` (the model-change sweep): events and ticks do not re-evaluate
    them under a new model as a whole."""
    if not rows:
        return
    columns = [[getattr(r, name) for r in rows] for name, _ in _CUSTOMER_COLUMNS]
    await (await _driver(session)).execute(_UPSERT_CUSTOMERS[set_model_version], *columns)


_SAVE_CLOCKS = (
    f"UPDATE {customers.fullname} AS c "
    "SET evaluated_until = u.until, due_at = u.due, "
    "settle_until = coalesce(u.settle, c.settle_until), updated_at = now() "
    "FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[]) "
    "AS u(id, until, due, settle) WHERE c.customer_id = u.id"
)

Clock = tuple[str, datetime | None, datetime | None, datetime | None]


async def save_clocks(session: AsyncSession, clocks: Sequence[Clock]) -> None:
    """(customer, evaluated_until, due_at, settle_until or None to keep it) of customers
    whose inputs and history did not change: the timeline blob is left alone."""
    if clocks:
        columns = [list(c) for c in zip(*clocks, strict=True)]
        await (await _driver(session)).execute(_SAVE_CLOCKS, *columns)


async def mark_model_version(session: AsyncSession, ids: Sequence[str], version: int) -> None:
    c = customers
    await session.execute(
        c.update().where(c.c.customer_id.in_(list(ids))).values(model_version=version)
    )


async def get_customer(session: AsyncSession, customer_id: str) -> Any:
    c = customers
    return (await session.execute(sa.select(c).where(c.c.customer_id == customer_id))).first()


# -- identity links ------------------------------------------------------------------


async def lock_ids(session: AsyncSession, ids: Sequence[str]) -> None:
    """Hold these customer ids for this transaction, in one sorted order so two writers
    never deadlock on them. A row lock cannot guard an id with no row yet, and an
    anonymous id's first event must not race the link that merges it."""
    if ids:
        await (await _driver(session)).execute(_LOCK_IDS, list(ids))


_LOCK_IDS = (
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(id, 0) AS k "
    "FROM unnest($1::text[]) AS id ORDER BY k) AS ids"
)


async def links_of(session: AsyncSession, ids: Sequence[str]) -> dict[str, str]:
    """The known customer each of these ids is a merged anonymous id of (those that are)."""
    if not ids:
        return {}
    rows = await (await _driver(session)).fetch(_LINKS_OF, list(ids))
    return {r[0]: r[1] for r in rows}


_LINKS_OF = (
    f"SELECT anonymous_id, customer_id FROM {identity_links.fullname} "
    "WHERE anonymous_id = ANY($1::text[])"
)


async def add_links(session: AsyncSession, links: Sequence[tuple[str, str]]) -> None:
    """(anonymous id, customer id) pairs; an anonymous id linked already keeps its link."""
    if links:
        anonymous, known = zip(*links, strict=True)
        await (await _driver(session)).execute(_ADD_LINKS, list(anonymous), list(known))


_ADD_LINKS = (
    f"INSERT INTO {identity_links.fullname} (anonymous_id, customer_id) "
    "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
)


async def linked_ids(session: AsyncSession, customer_id: str) -> list[tuple[str, datetime]]:
    """The anonymous ids merged into a customer, with when, oldest first."""
    i = identity_links
    rows = await session.execute(
        sa.select(i.c.anonymous_id, i.c.linked_at)
        .where(i.c.customer_id == customer_id)
        .order_by(i.c.linked_at, i.c.anonymous_id)
    )
    return [(r.anonymous_id, r.linked_at) for r in rows]


async def delete_customers(session: AsyncSession, ids: Sequence[str]) -> None:
    """Everything held under these ids: inputs, history and the customer row (with its
    timer)."""
    if ids:
        driver = await _driver(session)
        for table in (inputs, transitions, customers):
            await driver.execute(
                f"DELETE FROM {table.fullname} WHERE customer_id = ANY($1::text[])", list(ids)
            )


# -- privacy -------------------------------------------------------------------------


_ERASE_TRANSITIONS = (
    f"WITH gone AS (DELETE FROM {transitions.fullname} WHERE customer_id = ANY($1::text[]) "
    "RETURNING at, from_stage, to_stage, cause) "
    f"INSERT INTO {erased_transitions.fullname} (at, from_stage, to_stage, cause) "
    "SELECT * FROM gone ORDER BY at"
)


def _rows(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])  # "DELETE 3", "INSERT 0 3"


async def erase(session: AsyncSession, ids: list[str]) -> dict[str, int]:
    """Everything held under these ids (a customer and their anonymous ids), for a
    privacy erasure: rows erased per table. Their transitions stay as anonymous rows so
    flows keep adding up. The customer rows are locked first: a writer holding them
    commits before this reads the rest."""
    driver = await _driver(session)
    await lock_customers(session, ids)
    erased = {"transitions": _rows(await driver.execute(_ERASE_TRANSITIONS, ids))}
    for table in (inputs, customers):
        erased[table.name] = _rows(
            await driver.execute(
                f"DELETE FROM {table.fullname} WHERE customer_id = ANY($1::text[])", ids
            )
        )
    erased["identity_links"] = _rows(
        await driver.execute(
            f"DELETE FROM {identity_links.fullname} "
            "WHERE customer_id = ANY($1::text[]) OR anonymous_id = ANY($1::text[])",
            ids,
        )
    )
    return erased


async def list_inputs(session: AsyncSession, customer_id: str) -> list[Any]:
    """A customer's stored inputs (source, event id, time µs, input JSON), in time order."""
    i = inputs
    rows = await session.execute(
        sa.select(i.c.source, i.c.event_id, i.c.at, i.c.input)
        .where(i.c.customer_id == customer_id)
        .order_by(i.c.at, i.c.source, i.c.event_id)
    )
    return list(rows)


# -- transitions ---------------------------------------------------------------------


_TRANSITION_COLUMNS = (
    ("customer_id", "text"),
    ("position", "int"),
    ("transition_id", "text"),
    ("at", "timestamptz"),
    ("from_stage", "text"),
    ("to_stage", "text"),
    ("cause", "text"),
    ("event_source", "text"),
    ("event_id", "text"),
    ("event_type", "text"),
    ("model_version", "int"),
    ("facts", "text"),  # JSON text, cast to jsonb in the statement
)
_TRUNCATE = (
    f"DELETE FROM {transitions.fullname} AS t USING unnest($1::text[], $2::int[]) AS d(id, pos) "
    "WHERE t.customer_id = d.id AND t.position >= d.pos"
)
_INSERT_TRANSITIONS = (
    f"INSERT INTO {transitions.fullname} ({', '.join(c for c, _ in _TRANSITION_COLUMNS)}) "
    f"SELECT {', '.join(c for c, _ in _TRANSITION_COLUMNS[:-1])}, facts::jsonb FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(_TRANSITION_COLUMNS, 1))
    + f") AS r({', '.join(c for c, _ in _TRANSITION_COLUMNS)})"
)


async def replace_transitions(
    session: AsyncSession, truncate: Sequence[tuple[str, int]], rows: Sequence[dict[str, Any]]
) -> None:
    """Drop each (customer, from position) tail, then insert the new rows (`facts` as JSON
    text)."""
    driver = await _driver(session)
    if truncate:
        ids, positions = zip(*truncate, strict=True)
        await driver.execute(_TRUNCATE, list(ids), list(positions))
    if rows:
        columns = [[r[name] for r in rows] for name, _ in _TRANSITION_COLUMNS]
        await driver.execute(_INSERT_TRANSITIONS, *columns)


_INSERT_OUTBOX = (
    f"INSERT INTO {outbox.fullname} (topic, key, value, headers, event_id) "
    "SELECT topic, key, value, headers::jsonb, event_id "
    "FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[]) "
    "WITH ORDINALITY AS r(topic, key, value, headers, event_id, n) "
    "ORDER BY n"  # ids in list order: the relay publishes a customer's changes in id order
)


async def add_outbox(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Outbox rows: topic, key, value, headers (JSON text), event_id."""
    if rows:
        columns = [[r[name] for r in rows] for name in ("topic", "key", "value", "headers")]
        columns.append([r["event_id"] for r in rows])
        await (await _driver(session)).execute(_INSERT_OUTBOX, *columns)


async def list_transitions(
    session: AsyncSession, customer_id: str, limit: int | None = None, offset: int = 0
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
    """Transitions per (from, to) in the window, erased customers' included."""
    both = sa.union_all(
        *(
            sa.select(t.c.from_stage, t.c.to_stage).where(t.c.at >= start, t.c.at < end)
            for t in (transitions, erased_transitions)
        )
    ).subquery()
    rows = await session.execute(
        sa.select(both.c.from_stage, both.c.to_stage, sa.func.count())
        .group_by(both.c.from_stage, both.c.to_stage)
        .order_by(sa.func.count().desc(), both.c.from_stage, both.c.to_stage)
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


async def churned(
    session: AsyncSession, start: datetime, end: datetime, customer_stages: Sequence[str], to: str
) -> int:
    """Of the customers in a customer stage at `start`, those who moved to `to` in the
    window: the numerator of a rate over the customers at the start (one who became a
    customer and lapsed within the window is not in the denominator, so not here)."""
    t, a = transitions, _stage_at(start)
    return int(
        await session.scalar(
            sa.select(sa.func.count(sa.distinct(t.c.customer_id)))
            .select_from(t.join(a, a.c.customer_id == t.c.customer_id))
            .where(a.c.stage.in_(customer_stages), t.c.at >= start, t.c.at < end)
            .where(t.c.to_stage == to)
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
