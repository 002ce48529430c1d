"""Every SQL statement of the campaigns service. Callers own the transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from clm_campaigns.domain.policy import PastContact
from clm_campaigns.domain.projection import CustomerState
from clm_campaigns.models import (
    actions,
    clock,
    customers,
    journey_decisions,
    journey_runs,
    journey_steps,
    journey_versions,
    journeys,
    segment_members,
    segment_sizes,
    segment_versions,
    segments,
    trigger_versions,
    triggers,
)

# Statuses that count as contacting the customer (for caps and cooldowns).
CONTACT_STATUSES = ("pending", "sending", "delivered")
FINAL_STATUSES = ("delivered", "failed", "suppressed", "held_out")
FINISH_COLUMNS = ("id", "status", "due_at", "delivered_at", "last_error")


# --- many rows in one statement -------------------------------------------------------
# A batch's rows go as one array per column, unnested by the server: one statement and a
# handful of parameters for any batch size. As executemany, SQLAlchemy built and
# converted every row's parameters one by one, a large share of the service's CPU.


def _array_param(column: sa.Column[Any]) -> sa.BindParameter[Any]:
    """`:b_<column>`, an array of the column's values; JSONB goes as text (serialised as
    SQLAlchemy's own JSONB binding would, see `_arrays`) for the server to cast."""
    name = f"b_{column.name}"  # a column's own name is reserved in INSERT and UPDATE
    return sa.bindparam(name, type_=ARRAY(sa.Text if _json(column) else column.type))


def _json(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, JSONB)


def _unnested(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    values = sa.func.unnest(_array_param(column))
    return sa.cast(values, JSONB) if _json(column) else values


def _insert_arrays(table: sa.Table, names: Sequence[str]) -> Any:
    """INSERT INTO table (names) SELECT unnest(:b_name1), unnest(:b_name2), ..."""
    return insert(table).from_select(
        list(names), sa.select(*(_unnested(table.c[n]) for n in names))
    )


def _arrays(
    table: sa.Table, names: Sequence[str], rows: Sequence[dict[str, Any]]
) -> dict[str, list[Any]]:
    """The parameters of `_insert_arrays`: one list per column."""
    out: dict[str, list[Any]] = {}
    for name in names:
        values = [r[name] for r in rows]
        if _json(table.c[name]):
            values = [json.dumps(v) for v in values]
        out[f"b_{name}"] = values
    return out


# --- triggers -------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerRow:
    id: str
    version: int
    enabled: bool
    definition: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class Versioned:
    """A table of definitions kept with their history: triggers, journeys."""

    table: sa.Table
    versions: sa.Table
    key: str  # the history's column naming the definition

    @property
    def columns(self) -> tuple[sa.Column[Any], ...]:
        t = self.table.c
        return (t.id, t.version, t.enabled, t.definition, t.created_at, t.updated_at, t.updated_by)


TRIGGERS = Versioned(triggers, trigger_versions, "trigger_id")
JOURNEYS = Versioned(journeys, journey_versions, "journey_id")


def _trigger(row: Any) -> TriggerRow:
    return TriggerRow(*row)


async def insert_trigger(
    session: AsyncSession,
    *,
    trigger_id: str,
    definition: dict[str, Any],
    enabled: bool,
    by: str,
    kind: Versioned = TRIGGERS,
) -> TriggerRow:
    row = (
        await session.execute(
            kind.table.insert()
            .values(id=trigger_id, version=1, enabled=enabled, definition=definition, updated_by=by)
            .returning(*kind.columns)
        )
    ).one()
    await _record_version(session, kind, _trigger(row), "created")
    return _trigger(row)


async def get_trigger(
    session: AsyncSession, trigger_id: str, *, for_update: bool = False, kind: Versioned = TRIGGERS
) -> TriggerRow | None:
    t = kind.table
    stmt = sa.select(*kind.columns).where(t.c.id == trigger_id, t.c.deleted_at.is_(None))
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return _trigger(row) if row else None


async def trigger_exists(
    session: AsyncSession, trigger_id: str, *, kind: Versioned = TRIGGERS
) -> bool:
    """Also true for a deleted trigger: its history and stats stay readable."""
    return bool(await session.scalar(sa.select(sa.exists().where(kind.table.c.id == trigger_id))))


async def list_triggers(
    session: AsyncSession, *, enabled: bool | None = None, kind: Versioned = TRIGGERS
) -> list[TriggerRow]:
    t = kind.table
    stmt = sa.select(*kind.columns).where(t.c.deleted_at.is_(None))
    if enabled is not None:
        stmt = stmt.where(t.c.enabled.is_(enabled))
    rows = await session.execute(stmt.order_by(t.c.created_at, t.c.id))
    return [_trigger(r) for r in rows]


async def change_trigger(
    session: AsyncSession,
    current: TriggerRow,
    *,
    change: str,
    by: str,
    definition: dict[str, Any] | None = None,
    enabled: bool | None = None,
    delete: bool = False,
    kind: Versioned = TRIGGERS,
) -> TriggerRow:
    """A new version of a trigger (the caller holds the row lock from get_trigger)."""
    values: dict[str, Any] = {
        "version": current.version + 1,
        "updated_at": sa.func.now(),
        "updated_by": by,
    }
    if definition is not None:
        values["definition"] = definition
    if enabled is not None:
        values["enabled"] = enabled
    if delete:
        values["deleted_at"] = sa.func.now()
        values["enabled"] = False
    row = (
        await session.execute(
            kind.table.update()
            .where(kind.table.c.id == current.id)
            .values(**values)
            .returning(*kind.columns)
        )
    ).one()
    await _record_version(session, kind, _trigger(row), change)
    return _trigger(row)


async def _record_version(
    session: AsyncSession, kind: Versioned, row: TriggerRow, change: str
) -> None:
    await session.execute(
        kind.versions.insert().values(
            {
                kind.key: row.id,
                "version": row.version,
                "change": change,
                "enabled": row.enabled,
                "definition": row.definition,
                "changed_by": row.updated_by,
                "changed_at": row.updated_at,
            }
        )
    )


async def list_versions(
    session: AsyncSession, trigger_id: str, *, kind: Versioned = TRIGGERS
) -> list[dict[str, Any]]:
    t = kind.versions
    rows = await session.execute(
        sa.select(
            t.c.version, t.c.change, t.c.enabled, t.c.definition, t.c.changed_by, t.c.changed_at
        )
        .where(t.c[kind.key] == trigger_id)
        .order_by(t.c.version)
    )
    return [dict(r._mapping) for r in rows]


# The statements a consumed batch or a dispatch pass runs are built once: building one
# (and its cache key) per call cost more CPU than running it.
def _enabled(t: sa.Table) -> Any:
    return (
        sa.select(t.c.id, t.c.version, t.c.definition)
        .where(t.c.enabled.is_(True), t.c.deleted_at.is_(None))
        .order_by(t.c.id)
    )


_ENABLED = {"triggers": _enabled(triggers), "journeys": _enabled(journeys)}


async def enabled_triggers(
    session: AsyncSession, *, kind: Versioned = TRIGGERS
) -> list[tuple[str, int, dict[str, Any]]]:
    rows = await session.execute(_ENABLED[kind.table.name])
    return [(r.id, r.version, r.definition) for r in rows]


# --- customer projection --------------------------------------------------------------


def _state(row: Any) -> CustomerState:
    return CustomerState(
        customer_id=row.customer_id,
        stage=row.stage,
        stage_at=row.stage_at,
        traits=dict(row.traits),
        facts=dict(row.facts),
        scores=dict(row.scores),
        scores_at=row.scores_at,
        recent_purchases=list(row.recent_purchases),
        stage_transition=row.stage_transition,
        stage_entry=row.stage_entry,
        segments=dict(row.segments),
    )


async def load_customers(
    session: AsyncSession, customer_ids: Sequence[str], *, lock: bool = True
) -> dict[str, CustomerState]:
    """Customers of a batch, locked so two consumers (a rebalance overlap) cannot
    interleave their read-modify-write of the same customer."""
    stmt = _LOCK_CUSTOMERS if lock else _LOAD_CUSTOMERS
    rows = await session.execute(stmt, {"ids": list(customer_ids)})
    return {r.customer_id: _state(r) for r in rows}


# = ANY(array): one statement text for any number of ids, where IN (...) rendered (and the
# server prepared) a new one for each batch size.
_IDS = sa.any_(sa.bindparam("ids", type_=ARRAY(sa.Text)))
_LOAD_CUSTOMERS = sa.select(customers).where(customers.c.customer_id == _IDS)
_LOCK_CUSTOMERS = _LOAD_CUSTOMERS.order_by(customers.c.customer_id).with_for_update()


async def customers_in_stage(
    session: AsyncSession, stage: str, after: str, limit: int
) -> list[CustomerState]:
    """Customers now in `stage`, by id after `after` (keyset paging), locked like a
    consumed batch's customers: an enrolment and a transition of the same customer do
    not interleave."""
    c = customers
    rows = await session.execute(
        sa.select(customers)
        .where(c.c.stage == stage, c.c.customer_id > after)
        .order_by(c.c.customer_id)
        .limit(limit)
        .with_for_update()
    )
    return [_state(r) for r in rows]


async def customers_in_segment(
    session: AsyncSession, segment_id: str, after: str, limit: int
) -> list[tuple[CustomerState, datetime]]:
    """A segment's members with the start of their stay, by id after `after` (keyset),
    locked as customers_in_stage locks them."""
    c, m = customers, segment_members
    rows = await session.execute(
        sa.select(customers, m.c.since)
        .join(m, m.c.customer_id == c.c.customer_id)
        .where(m.c.segment_id == segment_id, c.c.customer_id > after)
        .order_by(c.c.customer_id)
        .limit(limit)
        .with_for_update(of=customers)
    )
    return [(_state(r), r.since) for r in rows]


async def get_customer(session: AsyncSession, customer_id: str) -> CustomerState | None:
    return (await load_customers(session, [customer_id], lock=False)).get(customer_id)


async def save_customers(session: AsyncSession, states: Iterable[CustomerState]) -> None:
    rows = [
        {
            "customer_id": s.customer_id,
            "stage": s.stage,
            "stage_at": s.stage_at,
            "traits": s.traits,
            "facts": s.facts,
            "scores": s.scores,
            "scores_at": s.scores_at,
            "recent_purchases": s.recent_purchases,
            "stage_transition": s.stage_transition,
            "stage_entry": s.stage_entry,
            "segments": s.segments,
        }
        for s in states
    ]
    if not rows:
        return
    # Sorted: concurrent batches then lock rows in the same order (no deadlock).
    rows.sort(key=lambda r: str(r["customer_id"]))
    await session.execute(_SAVE_CUSTOMERS, _arrays(customers, CUSTOMER_COLUMNS, rows))


CUSTOMER_COLUMNS = (
    "customer_id", "stage", "stage_at", "traits", "facts", "scores", "scores_at",
    "recent_purchases", "stage_transition", "stage_entry", "segments",
)  # fmt: skip


def _save_customers() -> Any:
    stmt = _insert_arrays(customers, CUSTOMER_COLUMNS)
    return stmt.on_conflict_do_update(
        index_elements=[customers.c.customer_id],
        set_={
            **{k: stmt.excluded[k] for k in CUSTOMER_COLUMNS if k != "customer_id"},
            "updated_at": sa.func.now(),
        },
    )


_SAVE_CUSTOMERS = _save_customers()


# --- actions --------------------------------------------------------------------------


async def recent_contacts(
    session: AsyncSession, customer_ids: Sequence[str], since: datetime
) -> dict[str, list[PastContact]]:
    rows = await session.execute(_RECENT_CONTACTS, {"ids": list(customer_ids), "since": since})
    out: dict[str, list[PastContact]] = {}
    for r in rows:
        out.setdefault(r.customer_id, []).append(
            PastContact(r.trigger_id, r.created_at, r.channel, r.transactional)
        )
    return out


_RECENT_CONTACTS = sa.select(
    actions.c.customer_id,
    actions.c.trigger_id,
    actions.c.created_at,
    actions.c.channel,
    actions.c.transactional,
).where(
    actions.c.customer_id == _IDS,
    actions.c.created_at >= sa.bindparam("since", type_=sa.DateTime(timezone=True)),
    actions.c.status.in_(CONTACT_STATUSES),
)


# Statuses that count as having acted on an entry (re-entry control): a held-out entry is
# measured as one, so a re-created transition is not a second chance to treat it.
ENTRY_STATUSES = ("pending", "sending", "delivered", "held_out")


@dataclass(frozen=True)
class Entry:
    trigger_id: str
    key: str | None
    cause_time: datetime
    cause: str  # the causing event, `<source>/<id>` (a transition's id for transitions)
    status: str


async def entries(
    session: AsyncSession, customer_ids: Sequence[str], trigger_ids: Sequence[str]
) -> dict[str, list[Entry]]:
    """The entries these triggers acted on for these customers, by customer."""
    if not customer_ids or not trigger_ids:
        return {}
    rows = await session.execute(
        _ENTRIES, {"ids": list(customer_ids), "triggers": list(trigger_ids)}
    )
    out: dict[str, list[Entry]] = {}
    for r in rows:
        out.setdefault(r.customer_id, []).append(
            Entry(r.trigger_id, r.entry_key, r.cause_time, r.cause_event, r.status)
        )
    return out


_ENTRIES = sa.select(
    actions.c.customer_id,
    actions.c.trigger_id,
    actions.c.entry_key,
    actions.c.cause_time,
    actions.c.cause_event,
    actions.c.status,
).where(
    actions.c.customer_id == _IDS,
    actions.c.trigger_id == sa.any_(sa.bindparam("triggers", type_=ARRAY(sa.Text))),
    actions.c.status.in_(ENTRY_STATUSES),
)


@dataclass(frozen=True)
class Retracted:
    id: str
    customer_id: str
    trigger_id: str
    channel: str


async def suppress_retracted(
    session: AsyncSession, causes: Sequence[str], keep: Sequence[str]
) -> list[Retracted]:
    """Pending actions caused by these transitions (`<source>/<transition id>`), except
    those of the triggers in `keep`, become suppressed as retracted. An action being sent
    right now is not pending: it goes out (its send time came before the retraction)."""
    if not causes:
        return []
    rows = await session.execute(_RETRACT, {"causes": list(causes), "keep": list(keep)})
    return [Retracted(*r) for r in rows]


_RETRACT = (
    actions.update()
    .where(
        actions.c.cause_event == sa.any_(sa.bindparam("causes", type_=ARRAY(sa.Text))),
        actions.c.status == "pending",
        sa.not_(actions.c.trigger_id == sa.any_(sa.bindparam("keep", type_=ARRAY(sa.Text)))),
    )
    .values(status="suppressed", suppressed_reason="retracted", due_at=sa.func.now())
    .returning(actions.c.id, actions.c.customer_id, actions.c.trigger_id, actions.c.channel)
)


async def merge_identities(
    session: AsyncSession, merges: Sequence[tuple[str, str]], keep: Sequence[str]
) -> list[Retracted]:
    """(customer, anonymous id) pairs: the anonymous id's actions become the customer's,
    so re-entry control, caps and cooldowns count them. Its pending actions of transitions
    are suppressed as retracted first (the stage engine retracts every transition of a
    merged anonymous id), except those of the triggers in `keep`. Its projection row is
    dropped (the caller folded it into the customer's). A second run finds nothing."""
    if not merges:
        return []
    params = {"known": [k for k, _ in merges], "anonymous": [a for _, a in merges]}
    gone = await session.execute(
        _RETRACT_MERGED, {"anonymous": params["anonymous"], "keep": list(keep)}
    )
    await session.execute(_REKEY_ACTIONS, params)
    await session.execute(_DROP_CUSTOMERS, {"ids": params["anonymous"]})
    return [Retracted(*r) for r in gone]


_RETRACT_MERGED = (
    actions.update()
    .where(
        actions.c.customer_id == sa.any_(sa.bindparam("anonymous", type_=ARRAY(sa.Text))),
        actions.c.status == "pending",
        # A transition's action (`<stage>#<n>` or `transition:<id>`), not an event's.
        sa.func.coalesce(actions.c.entry_key, "event:").not_like("event:%"),
        sa.not_(actions.c.trigger_id == sa.any_(sa.bindparam("keep", type_=ARRAY(sa.Text)))),
    )
    .values(status="suppressed", suppressed_reason="retracted", due_at=sa.func.now())
    .returning(actions.c.id, actions.c.customer_id, actions.c.trigger_id, actions.c.channel)
)
_REKEY_ACTIONS = sa.text("""
    UPDATE campaigns.actions a SET customer_id = m.known
    FROM unnest(CAST(:known AS text[]), CAST(:anonymous AS text[])) AS m(known, anonymous)
    WHERE a.customer_id = m.anonymous
""")
_DROP_CUSTOMERS = customers.delete().where(customers.c.customer_id == _IDS)


ACTION_COLUMNS = (
    "id", "trigger_id", "trigger_version", "customer_id", "channel", "status",
    "suppressed_reason", "deferred_reason", "target", "payload", "cause_event", "cause_time",
    "created_at", "due_at", "attempts", "last_error", "delivered_at",
    "conversion_window_seconds", "converted_at", "entry_key", "occasion", "transactional",
)  # fmt: skip
_INSERT_ACTIONS = _insert_arrays(actions, ACTION_COLUMNS)


async def insert_actions(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Rows with exactly the keys of ACTION_COLUMNS."""
    if rows:
        await session.execute(_INSERT_ACTIONS, _arrays(actions, ACTION_COLUMNS, rows))


async def record_conversions(
    session: AsyncSession, purchases: Sequence[tuple[str, datetime]]
) -> int:
    """Mark delivered and held-out actions followed by a purchase within their window."""
    if not purchases:
        return 0
    a = actions
    p = sa.values(
        sa.column("customer_id", sa.Text),
        sa.column("at", sa.DateTime(timezone=True)),
        name="p",
    ).data(list(purchases))
    started = sa.case((a.c.status == "delivered", a.c.delivered_at), else_=a.c.created_at)
    window = sa.func.make_interval(0, 0, 0, 0, 0, 0, a.c.conversion_window_seconds)
    result = await session.execute(
        a.update()
        .where(
            a.c.customer_id == p.c.customer_id,
            a.c.converted_at.is_(None),
            a.c.status.in_(("delivered", "held_out")),
            started <= p.c.at,
            p.c.at <= started + window,
        )
        .values(converted_at=p.c.at)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Claimed:
    id: str
    trigger_id: str
    customer_id: str
    channel: str
    target: dict[str, Any]
    payload: str
    attempts: int
    cause_time: datetime
    secret: str | None
    trigger_version: int
    occasion: dict[str, Any] | None  # the causing event, when the condition reads it


async def claim_due(
    session: AsyncSession, *, limit: int, lease: timedelta, now: datetime
) -> list[Claimed]:
    """Claim actions due by `now` (the service's clock; and ones whose sender's claim
    lapsed) with SKIP LOCKED, so dispatchers on several replicas never take the same
    action at the same time. The claim moves `due_at` to the end of the lease."""
    rows = await session.execute(_CLAIM, {"limit": limit, "lease": lease, "now": now})
    return [Claimed(*r) for r in rows]


# A journey's send step (trigger id `<journey>/<step>`) keeps its secret in the journey
# version the action is of.
_JOURNEY_SECRET: sa.ColumnElement[str] = sa.literal_column(
    """(SELECT s.value -> 'action' ->> 'secret'
        FROM campaigns.journey_versions v, jsonb_array_elements(v.definition -> 'steps') s
        WHERE v.journey_id = split_part(campaigns.actions.trigger_id, '/', 1)
          AND v.version = campaigns.actions.trigger_version
          AND s.value ->> 'id' = split_part(campaigns.actions.trigger_id, '/', 2))"""
)


def _claim() -> Any:
    a = actions
    now = sa.bindparam("now", type_=sa.DateTime(timezone=True))
    due = (
        sa.select(a.c.id)
        .where(a.c.status.in_(("pending", "sending")), a.c.due_at <= now)
        .order_by(a.c.due_at)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    secret = (
        sa.select(triggers.c.definition["action"]["secret"].astext)
        .where(triggers.c.id == a.c.trigger_id)
        .scalar_subquery()
    )
    return (
        a.update()
        .where(a.c.id == due.c.id)
        .values(
            status="sending",
            attempts=a.c.attempts + 1,
            due_at=now + sa.bindparam("lease", type_=sa.Interval),
        )
        .returning(
            a.c.id,
            a.c.trigger_id,
            a.c.customer_id,
            a.c.channel,
            a.c.target,
            a.c.payload,
            a.c.attempts,
            a.c.cause_time,
            sa.func.coalesce(secret, _JOURNEY_SECRET),
            a.c.trigger_version,
            a.c.occasion,
        )
    )


_CLAIM = _claim()


async def trigger_versions_of(
    session: AsyncSession, keys: Iterable[tuple[str, int]], *, kind: Versioned = TRIGGERS
) -> dict[tuple[str, int], tuple[dict[str, Any], bool]]:
    """(definition of that version, whether the trigger is enabled now) per (id, version):
    what the send-time re-check needs of the triggers of claimed actions."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    v, t = kind.versions, kind.table
    rows = await session.execute(
        sa.select(v.c[kind.key].label("id"), v.c.version, v.c.definition, t.c.enabled)
        .join(t, t.c.id == v.c[kind.key])
        .where(sa.tuple_(v.c[kind.key], v.c.version).in_(keys))
    )
    return {(r.id, r.version): (r.definition, bool(r.enabled)) for r in rows}


_FINISHED = (
    sa.func.unnest(*(_array_param(actions.c[n]) for n in FINISH_COLUMNS))
    .table_valued(*(sa.column(n) for n in FINISH_COLUMNS))
    .render_derived(name="r")
)
_FINISH = (
    actions.update()
    .where(actions.c.id == _FINISHED.c.id, actions.c.status == "sending")
    .values({n: _FINISHED.c[n] for n in FINISH_COLUMNS if n != "id"})
    .returning(actions.c.id)
)
# An action sent although its customer was erased meanwhile (claimed before, anonymised
# and suppressed as `erased` while in flight): delivered is the truth, but nothing of the
# outcome (an error naming the target) goes back into the anonymous row.
_DELIVERED_ERASED = (
    actions.update()
    .where(
        actions.c.id == _IDS,
        actions.c.status == "suppressed",
        actions.c.suppressed_reason == "erased",
    )
    .values(
        status="delivered",
        suppressed_reason=None,
        delivered_at=sa.bindparam("at", type_=sa.DateTime(timezone=True)),
    )
)


async def finish(session: AsyncSession, results: Sequence[dict[str, Any]]) -> set[str]:
    """Record delivery outcomes: keys id, status, due_at, delivered_at, last_error.
    Returns the ids recorded, those still `sending`: an action whose customer was erased
    meanwhile is not one of them (it only turns delivered, anonymous, if it was sent)."""
    # One row per action, the first one: as row-by-row updates, a later one for the same
    # action would no longer find it `sending`.
    first: dict[str, dict[str, Any]] = {}
    for r in results:
        first.setdefault(r["id"], r)
    if not first:
        return set()
    rows = list(first.values())
    params = {f"b_{n}": [r[n] for r in rows] for n in FINISH_COLUMNS}
    done = set((await session.scalars(_FINISH, params)).all())
    sent = [r for r in rows if r["id"] not in done and r["status"] == "delivered"]
    if sent:
        await session.execute(
            _DELIVERED_ERASED, {"ids": [r["id"] for r in sent], "at": sent[0]["delivered_at"]}
        )
    return done


async def suppress_claimed(session: AsyncSession, reasons: dict[str, str]) -> None:
    """Claimed actions that the send-time re-check stopped: suppressed, with the reason."""
    if reasons:
        await session.execute(
            _SUPPRESS_CLAIMED, {"ids": list(reasons), "reasons": list(reasons.values())}
        )


_SUPPRESS_CLAIMED = sa.text(
    f"UPDATE {actions.fullname} AS a SET status = 'suppressed', suppressed_reason = r.reason, "
    "due_at = now() "
    "FROM unnest(CAST(:ids AS text[]), CAST(:reasons AS text[])) AS r(id, reason) "
    "WHERE a.id = r.id AND a.status = 'sending'"
)


async def backlog(session: AsyncSession) -> tuple[int, float]:
    a = actions
    count, age = (
        await session.execute(
            sa.select(
                sa.func.count(),
                sa.func.extract("epoch", sa.func.now() - sa.func.min(a.c.due_at)),
            ).where(a.c.status.in_(("pending", "sending")), a.c.due_at <= sa.func.now())
        )
    ).one()
    return int(count), float(age or 0)


ACTION_FIELDS = (
    actions.c.id,
    actions.c.trigger_id,
    actions.c.trigger_version,
    actions.c.customer_id,
    actions.c.channel,
    actions.c.status,
    actions.c.suppressed_reason,
    actions.c.deferred_reason,
    actions.c.target,
    actions.c.payload,
    actions.c.cause_event,
    actions.c.cause_time,
    actions.c.created_at,
    actions.c.due_at,
    actions.c.attempts,
    actions.c.last_error,
    actions.c.delivered_at,
    actions.c.converted_at,
    actions.c.entry_key,
)


async def list_actions(
    session: AsyncSession,
    *,
    customer_id: str | None,
    trigger_id: str | None,
    status: str | None,
    limit: int,
    after: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """Newest first (ties by id); `after`: the (created_at, id) the previous page ended at."""
    a = actions
    stmt = sa.select(*ACTION_FIELDS)
    if after is not None:
        created_at, action_id = after
        stmt = stmt.where(
            sa.or_(
                a.c.created_at < created_at,
                sa.and_(a.c.created_at == created_at, a.c.id > action_id),
            )
        )
    if customer_id is not None:
        stmt = stmt.where(a.c.customer_id == customer_id)
    if trigger_id is not None:
        stmt = stmt.where(a.c.trigger_id == trigger_id)
    if status is not None:
        stmt = stmt.where(a.c.status == status)
    rows = await session.execute(stmt.order_by(a.c.created_at.desc(), a.c.id).limit(limit))
    return [dict(r._mapping) for r in rows]


@dataclass(frozen=True)
class TriggerCounts:
    by_status: dict[str, int]
    suppressed: dict[str, int]
    deferred: dict[str, int]
    treated: tuple[int, int]  # delivered actions, converted
    holdout: tuple[int, int]  # held-out records, converted


async def trigger_counts(session: AsyncSession, trigger_id: str) -> TriggerCounts:
    a = actions
    rows = (
        await session.execute(
            sa.select(
                a.c.status,
                a.c.suppressed_reason,
                a.c.deferred_reason,
                sa.func.count(),
                sa.func.count(a.c.converted_at),
            )
            .where(a.c.trigger_id == trigger_id)
            .group_by(a.c.status, a.c.suppressed_reason, a.c.deferred_reason)
        )
    ).all()
    by_status: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    deferred: dict[str, int] = {}
    treated, holdout = [0, 0], [0, 0]
    for status, reason, deferral, n, converted in rows:
        by_status[status] = by_status.get(status, 0) + n
        if status == "suppressed" and reason:
            suppressed[reason] = suppressed.get(reason, 0) + n
        if deferral:
            deferred[deferral] = deferred.get(deferral, 0) + n
        if status == "delivered":
            treated[0] += n
            treated[1] += converted
        elif status == "held_out":
            holdout[0] += n
            holdout[1] += converted
    return TriggerCounts(
        by_status, suppressed, deferred, (treated[0], treated[1]), (holdout[0], holdout[1])
    )


SERIES_COLUMNS = (
    "matched", "fired", "delivered", "failed", "suppressed", "held_out",
    "converted_treated", "converted_holdout",
)  # fmt: skip

# Actions count in the bucket they were created in, conversions in the one they converted
# in; every bucket of the window is present, with zeros.
_SERIES = sa.text("""
WITH b AS (
    SELECT generate_series(date_trunc(:bucket, CAST(:start AS timestamptz)),
                           CAST(:end AS timestamptz), CAST(:step AS interval)) AS at
), made AS (
    SELECT date_trunc(:bucket, created_at) AS at,
           count(*) AS matched,
           count(*) FILTER (WHERE status IN ('delivered', 'failed', 'pending', 'sending'))
               AS fired,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'suppressed') AS suppressed,
           count(*) FILTER (WHERE status = 'held_out') AS held_out
    FROM campaigns.actions
    WHERE trigger_id = :trigger AND created_at >= date_trunc(:bucket, CAST(:start AS timestamptz))
      AND created_at <= :end
    GROUP BY 1
), conv AS (
    SELECT date_trunc(:bucket, converted_at) AS at,
           count(*) FILTER (WHERE status = 'delivered') AS converted_treated,
           count(*) FILTER (WHERE status = 'held_out') AS converted_holdout
    FROM campaigns.actions
    WHERE trigger_id = :trigger
      AND converted_at >= date_trunc(:bucket, CAST(:start AS timestamptz))
      AND converted_at <= :end
    GROUP BY 1
)
SELECT b.at,
       coalesce(made.matched, 0) AS matched, coalesce(made.fired, 0) AS fired,
       coalesce(made.delivered, 0) AS delivered, coalesce(made.failed, 0) AS failed,
       coalesce(made.suppressed, 0) AS suppressed, coalesce(made.held_out, 0) AS held_out,
       coalesce(conv.converted_treated, 0) AS converted_treated,
       coalesce(conv.converted_holdout, 0) AS converted_holdout
FROM b LEFT JOIN made USING (at) LEFT JOIN conv USING (at)
ORDER BY b.at
""")


async def trigger_series(
    session: AsyncSession, trigger_id: str, start: datetime, end: datetime, bucket: str
) -> list[dict[str, Any]]:
    """Counts per `bucket` ("hour" or "day") from `start` to `end`."""
    params = {"trigger": trigger_id, "start": start, "end": end, "bucket": bucket}
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    rows = (await session.execute(_SERIES, {**params, "step": step})).all()
    return [{"at": r.at.isoformat(), **{c: getattr(r, c) for c in SERIES_COLUMNS}} for r in rows]


async def find_customers_by_email(
    session: AsyncSession, email: str, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Customers whose latest `email` trait is `email`, ignoring case (indexed), by id;
    and whether more than `limit` matched."""
    c = customers
    rows = (
        await session.execute(
            sa.select(c.c.customer_id, c.c.stage, c.c.stage_at, c.c.traits)
            .where(sa.func.lower(c.c.traits["email"].astext) == email.lower())
            .order_by(c.c.customer_id)
            .limit(limit + 1)
        )
    ).all()
    return [
        {
            "customer_id": r.customer_id,
            "stage": r.stage,
            "since": r.stage_at.isoformat() if r.stage_at else None,
            "email": r.traits.get("email"),
            "name": r.traits.get("name"),
        }
        for r in rows[:limit]
    ], len(rows) > limit


# --- privacy --------------------------------------------------------------------------


async def customer_export(
    session: AsyncSession, customer_id: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Everything held of one id: its projection row and every action, oldest first."""
    row = (
        await session.execute(sa.select(customers).where(customers.c.customer_id == customer_id))
    ).first()
    rows = await session.execute(
        sa.select(*ACTION_FIELDS, actions.c.occasion)
        .where(actions.c.customer_id == customer_id)
        .order_by(actions.c.created_at, actions.c.id)
    )
    return (dict(row._mapping) if row else None), [dict(r._mapping) for r in rows]


@dataclass(frozen=True)
class ErasedAction:
    trigger_id: str
    channel: str
    stopped: bool  # was pending or being sent: now suppressed as `erased`


async def erase_customers(
    session: AsyncSession, ids: Sequence[str]
) -> tuple[int, list[ErasedAction]]:
    """Delete the projection rows of `ids` and anonymise their actions in place, so
    trigger stats keep their counts: no customer id (`''` matches no customer, cap,
    cooldown, conversion or listing), target, payload, error, causing event or entry;
    actions not yet sent are suppressed as `erased`, never sent. The customer rows are
    locked first: a batch that holds them commits before, and is erased with the rest."""
    params = {"ids": list(ids)}
    await session.execute(_LOCK_CUSTOMERS, params)
    gone = await session.execute(_DROP_CUSTOMERS, params)
    erased = await session.execute(_ERASE_ACTIONS, params)
    return int(gone.rowcount), [  # type: ignore[attr-defined]
        ErasedAction(r.trigger_id, r.channel, r.suppressed_reason == "erased") for r in erased
    ]


_UNSENT = actions.c.status.in_(("pending", "sending"))
_ERASE_ACTIONS = (
    actions.update()
    .where(actions.c.customer_id == _IDS)
    .values(
        customer_id="",
        target=sa.cast(sa.literal("{}"), JSONB),
        payload=None,
        last_error=None,
        occasion=sa.null(),
        entry_key=None,
        cause_event="",
        # SET reads the old row: the status and reason before this update.
        status=sa.case((_UNSENT, "suppressed"), else_=actions.c.status),
        suppressed_reason=sa.case((_UNSENT, "erased"), else_=actions.c.suppressed_reason),
    )
    .returning(actions.c.trigger_id, actions.c.channel, actions.c.suppressed_reason)
)


# --- segments -------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRow:
    id: str
    version: int
    name: str
    description: str
    condition: str
    created_at: datetime
    updated_at: datetime
    updated_by: str
    recompute: dict[str, Any] | None


_SEGMENT_COLUMNS = (
    segments.c.id,
    segments.c.version,
    segments.c.name,
    segments.c.description,
    segments.c.condition,
    segments.c.created_at,
    segments.c.updated_at,
    segments.c.updated_by,
    segments.c.recompute,
)
_LIVE_SEGMENT = segments.c.deleted_at.is_(None)


def _fresh_recompute(version: int) -> dict[str, Any]:
    return {"version": version, "done": 0, "total": None, "after": "", "finished_at": None}


async def insert_segment(
    session: AsyncSession,
    *,
    segment_id: str,
    name: str,
    description: str,
    condition: str,
    by: str,
) -> SegmentRow:
    row = (
        await session.execute(
            segments.insert()
            .values(
                id=segment_id,
                version=1,
                name=name,
                description=description,
                condition=condition,
                updated_by=by,
                recompute=_fresh_recompute(1),
            )
            .returning(*_SEGMENT_COLUMNS)
        )
    ).one()
    await _record_segment_version(session, SegmentRow(*row), "created")
    return SegmentRow(*row)


async def triggers_on_segment(session: AsyncSession, segment_id: str) -> list[str]:
    """Enabled triggers that fire on entering or leaving the segment."""
    t = triggers.c
    rows = await session.scalars(
        sa.select(t.id)
        .where(t.enabled, t.deleted_at.is_(None))
        .where(t.definition["on"]["segment_id"].astext == segment_id)
        .order_by(t.id)
    )
    return list(rows)


async def get_segment(
    session: AsyncSession, segment_id: str, *, for_update: bool = False
) -> SegmentRow | None:
    """`for_update` conflicts with the key-share lock consumed batches and recompute pages
    hold: a change waits for them, and they see it once it is committed."""
    stmt = sa.select(*_SEGMENT_COLUMNS).where(segments.c.id == segment_id, _LIVE_SEGMENT)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return SegmentRow(*row) if row else None


async def list_segments(session: AsyncSession) -> list[SegmentRow]:
    rows = await session.execute(
        sa.select(*_SEGMENT_COLUMNS)
        .where(_LIVE_SEGMENT)
        .order_by(segments.c.created_at, segments.c.id)
    )
    return [SegmentRow(*r) for r in rows]


async def change_segment(
    session: AsyncSession,
    current: SegmentRow,
    *,
    change: str,
    by: str,
    name: str | None = None,
    description: str | None = None,
    condition: str | None = None,
) -> SegmentRow:
    """A new version (the caller holds the row lock from get_segment). An update starts a
    recompute of the new version; a deletion drops the members."""
    await lock_segments(session)
    version = current.version + 1
    values: dict[str, Any] = {"version": version, "updated_at": sa.func.now(), "updated_by": by}
    if change == "deleted":
        values.update(deleted_at=sa.func.now(), recompute=None)
        await session.execute(
            segment_members.delete().where(segment_members.c.segment_id == current.id)
        )
    else:
        values.update(
            name=name if name is not None else current.name,
            description=description if description is not None else current.description,
            condition=condition if condition is not None else current.condition,
            recompute=_fresh_recompute(version),
        )
    row = (
        await session.execute(
            segments.update()
            .where(segments.c.id == current.id)
            .values(**values)
            .returning(*_SEGMENT_COLUMNS)
        )
    ).one()
    await _record_segment_version(session, SegmentRow(*row), change)
    return SegmentRow(*row)


async def _record_segment_version(session: AsyncSession, row: SegmentRow, change: str) -> None:
    await session.execute(
        segment_versions.insert().values(
            segment_id=row.id,
            version=row.version,
            change=change,
            name=row.name,
            description=row.description,
            condition=row.condition,
            changed_by=row.updated_by,
            changed_at=row.updated_at,
        )
    )


async def list_segment_versions(session: AsyncSession, segment_id: str) -> list[dict[str, Any]]:
    v = segment_versions
    rows = await session.execute(
        sa.select(
            v.c.version,
            v.c.change,
            v.c.name,
            v.c.description,
            v.c.condition,
            v.c.changed_by,
            v.c.changed_at,
        )
        .where(v.c.segment_id == segment_id)
        .order_by(v.c.version)
    )
    return [dict(r._mapping) for r in rows]


# Batches evaluating segments hold this advisory lock shared, a segment change holds it
# exclusively: the change waits for the batches that evaluate the current version, and
# every batch after it (its read is a statement of its own, after the lock) sees the
# change. An advisory lock, not FOR KEY SHARE on the segment rows: that wrote every
# segment row (its lock) in every batch.
SEGMENTS_LOCK = 0x636C6D5F73656773  # "clm_segs"
_PROGRESS = segments.c.recompute
_LIVE_SEGMENTS = (
    sa.select(
        segments.c.id,
        segments.c.version,
        segments.c.condition,
        # Recomputing the current version, and how far: read in SQL, not the whole JSON.
        sa.and_(
            _PROGRESS["version"].as_integer() == segments.c.version,
            _PROGRESS["finished_at"].astext.is_(None),
        ).label("pending"),
        sa.func.coalesce(_PROGRESS["after"].astext, "").label("after"),
    )
    .where(_LIVE_SEGMENT)
    .order_by(segments.c.id)
)


async def lock_segments(session: AsyncSession) -> None:
    """For a segment change: wait for the batches evaluating the current versions."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(SEGMENTS_LOCK)))


async def live_segments(session: AsyncSession) -> list[tuple[str, int, str, str | None]]:
    """(id, version, condition, recomputed_upto): while the current version is being
    recomputed, the last customer id it has evaluated ("" before the first page); None
    once every customer has been."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(SEGMENTS_LOCK)))
    rows = await session.execute(_LIVE_SEGMENTS)
    return [(r.id, r.version, r.condition, r.after if r.pending else None) for r in rows]


async def segment_for_recompute(
    session: AsyncSession, segment_id: str
) -> tuple[int, str, dict[str, Any] | None] | None:
    """The segment's version, condition and recompute progress, locked FOR NO KEY UPDATE:
    one recompute page at a time (another replica waits), a change (FOR UPDATE) waits,
    consumed batches (which do not lock segment rows) do not."""
    row = (
        await session.execute(
            sa.select(segments.c.version, segments.c.condition, segments.c.recompute)
            .where(segments.c.id == segment_id, _LIVE_SEGMENT)
            .with_for_update(key_share=True)
        )
    ).first()
    return (row.version, row.condition, row.recompute) if row else None


async def segments_to_recompute(session: AsyncSession) -> list[str]:
    rows = await session.execute(
        sa.select(segments.c.id)
        .where(
            _LIVE_SEGMENT,
            segments.c.recompute.is_not(None),
            segments.c.recompute["finished_at"].astext.is_(None),
        )
        .order_by(segments.c.updated_at)
    )
    return list(rows.scalars())


async def save_recompute(session: AsyncSession, segment_id: str, progress: dict[str, Any]) -> None:
    """Only for the version it is of: a newer version restarted it meanwhile."""
    await session.execute(
        segments.update()
        .where(
            segments.c.id == segment_id,
            segments.c.version == progress["version"],
            _LIVE_SEGMENT,
        )
        .values(recompute=progress)
    )


async def count_matching(
    session: AsyncSession, matches: ColumnElement[bool], undecided: ColumnElement[bool]
) -> tuple[int, int]:
    """Over every customer: how many a condition translated to SQL matches among the rows
    it decides, and how many rows it leaves undecided."""
    row = (
        await session.execute(
            sa.select(
                sa.func.count().filter(sa.and_(sa.not_(undecided), matches)),
                sa.func.count().filter(undecided),
            ).select_from(customers)
        )
    ).one()
    return int(row[0]), int(row[1])


async def count_customers(session: AsyncSession) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(customers)) or 0)


async def customers_page(
    session: AsyncSession,
    after: str,
    limit: int,
    *,
    lock: bool = False,
    reads: Iterable[str] | None = None,
    where: ColumnElement[bool] | None = None,
) -> list[CustomerState]:
    """Customers by id after `after` (keyset); `lock` as a consumed batch locks them (and
    with their memberships, which the recompute then changes). With `reads` (a
    condition's variables), only the columns those need: decoding JSONB a condition does
    not read is most of the cost of a pass over every customer."""
    wanted = set(_PAGE_COLUMNS) if reads is None else _columns_for(reads)
    stmt = (
        sa.select(
            customers.c.customer_id,
            *(customers.c[n] if n in wanted else sa.null() for n in _PAGE_COLUMNS[1:]),
            customers.c.segments if lock else sa.null(),
        )
        .where(customers.c.customer_id > after, sa.true() if where is None else where)
        .order_by(customers.c.customer_id)
        .limit(limit)
    )
    if lock:
        stmt = stmt.with_for_update()
    rows = await session.execute(stmt)
    # Positional: the fastest way to build one (a page may be every customer).
    return [
        CustomerState(
            r[0], r[1], None, r[2] or {}, r[3] or {}, r[4] or {}, None, [], None, None, r[5] or {}
        )
        for r in rows
    ]


# What each condition variable is built from (facts include traits and scores).
_NEEDS = {
    "stage": ("stage",),
    "facts": ("facts", "traits", "scores"),
    "scores": ("scores",),
    "traits": ("traits",),
}
_PAGE_COLUMNS = ("customer_id", "stage", "traits", "facts", "scores")


def _columns_for(reads: Iterable[str]) -> set[str]:
    return {c for r in reads for c in _NEEDS.get(r, ())}


async def write_memberships(
    session: AsyncSession, enter: Sequence[tuple[str, str, int]], leave: Sequence[tuple[str, str]]
) -> tuple[list[Stay], list[Stay]]:
    """Memberships begun ((segment, customer, version)) and ended ((segment, customer)):
    only the changes, which the caller worked out from the customers' `segments` (and
    writes there too). Returns the stays begun and ended."""
    left: list[Stay] = []
    if leave:
        gone = await session.execute(
            _LEAVE, {"seg": [s for s, _ in leave], "cust": [c for _, c in leave]}
        )
        left = [Stay(r.segment_id, r.customer_id, r.since) for r in gone]
    entered: list[Stay] = []
    if enter:
        rows = await session.execute(
            _ENTER,
            {
                "seg": [s for s, _, _ in enter],
                "cust": [c for _, c, _ in enter],
                "ver": [v for _, _, v in enter],
            },
        )
        entered = [Stay(r.segment_id, r.customer_id, r.since) for r in rows if r.inserted]
    return entered, left


_PAIRS = "unnest(CAST(:seg AS text[]), CAST(:cust AS text[])) AS e(segment_id, customer_id)"
_LEAVE = sa.text(f"""
    DELETE FROM campaigns.segment_members m USING {_PAIRS}
    WHERE m.segment_id = e.segment_id AND m.customer_id = e.customer_id
    RETURNING m.segment_id, m.customer_id, m.since
""")
# A row already there (which the customer's `segments` should have said) is kept.
_ENTER = sa.text("""
    INSERT INTO campaigns.segment_members AS m (segment_id, customer_id, segment_version)
    SELECT * FROM unnest(CAST(:seg AS text[]), CAST(:cust AS text[]), CAST(:ver AS int[]))
    ORDER BY 1, 2
    ON CONFLICT (segment_id, customer_id) DO UPDATE SET segment_version = EXCLUDED.segment_version
    RETURNING m.segment_id, m.customer_id, m.since, (xmax = 0) AS inserted
""")


async def save_segment_maps(session: AsyncSession, states: Iterable[CustomerState]) -> None:
    """The customers' `segments` alone (the recompute changes nothing else of theirs)."""
    rows = [(s.customer_id, json.dumps(s.segments)) for s in states]
    if rows:
        await session.execute(
            sa.text("""
                UPDATE campaigns.customers c SET segments = CAST(v.segments AS jsonb)
                FROM unnest(CAST(:ids AS text[]), CAST(:maps AS text[])) AS v(id, segments)
                WHERE c.customer_id = v.id
            """),
            {"ids": [i for i, _ in rows], "maps": [m for _, m in rows]},
        )


async def memberships_among(
    session: AsyncSession, pairs: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of these (segment, customer) pairs are memberships now."""
    pairs = list(pairs)
    if not pairs:
        return set()
    m = segment_members.c
    rows = await session.execute(
        sa.select(m.segment_id, m.customer_id).where(
            sa.tuple_(m.segment_id, m.customer_id).in_(pairs)
        )
    )
    return {(s, c) for s, c in rows}


async def ids_upto(session: AsyncSession, ids: Iterable[str], upto: str) -> set[str]:
    """The ids at or before `upto` in customer-id order (the keyset order of pages)."""
    rows = await session.execute(
        sa.text("SELECT i FROM unnest(CAST(:ids AS text[])) AS i WHERE i <= :upto"),
        {"ids": list(ids), "upto": upto},
    )
    return {i for (i,) in rows}


class Stay(NamedTuple):
    """One customer's stay in a segment, named by when it began."""

    segment_id: str
    customer_id: str
    since: datetime


def _customer_filters(stage: str | None, rfm_segments: Sequence[str] | None) -> list[Any]:
    where: list[Any] = []
    if stage is not None:
        where.append(customers.c.stage == stage)
    if rfm_segments is not None:
        where.append(customers.c.scores["rfm_segment"].astext.in_(list(rfm_segments)))
    return where


def _listed(r: Any) -> dict[str, Any]:
    return {
        "customer_id": r.customer_id,
        "stage": r.stage,
        "since": r.stage_at.isoformat() if r.stage_at else None,
        "email": r.traits.get("email"),
        "name": r.traits.get("name"),
        "rfm_segment": r.scores.get("rfm_segment"),
    }


async def list_members(
    session: AsyncSession,
    segment_id: str,
    *,
    after: str,
    limit: int,
    stage: str | None = None,
    rfm_segments: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """A segment's members by customer id after `after` (keyset), with their stage and
    RFM segment."""
    m, c = segment_members, customers
    rows = await session.execute(
        sa.select(
            m.c.customer_id,
            m.c.since,
            m.c.segment_version,
            c.c.stage,
            c.c.stage_at,
            c.c.traits,
            c.c.scores,
        )
        .join(c, c.c.customer_id == m.c.customer_id)
        .where(m.c.segment_id == segment_id, m.c.customer_id > after)
        .where(*_customer_filters(stage, rfm_segments))
        .order_by(m.c.customer_id)
        .limit(limit)
    )
    return [
        {**_listed(r), "member_since": r.since.isoformat(), "segment_version": r.segment_version}
        for r in rows
    ]


async def segment_size(session: AsyncSession, segment_id: str) -> int:
    m = segment_members
    stmt = sa.select(sa.func.count()).select_from(m).where(m.c.segment_id == segment_id)
    return int(await session.scalar(stmt) or 0)


async def sample_sizes(session: AsyncSession, interval: timedelta, keep: timedelta) -> int:
    """Record each recomputed segment's size for the current interval (once: replicas
    sampling the same interval add nothing) and drop samples older than `keep`; returns
    the samples added."""
    added = await session.execute(
        _SAMPLE_SIZES, {"interval": interval, "origin": datetime(2000, 1, 1, tzinfo=UTC)}
    )
    await session.execute(segment_sizes.delete().where(segment_sizes.c.at < sa.func.now() - keep))
    return len(added.all())


_SAMPLE_SIZES = sa.text("""
    INSERT INTO campaigns.segment_sizes (segment_id, at, members)
    SELECT s.id, date_bin(:interval, now(), :origin),
           (SELECT count(*) FROM campaigns.segment_members m WHERE m.segment_id = s.id)
    FROM campaigns.segments s
    WHERE s.deleted_at IS NULL AND s.recompute->>'finished_at' IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING segment_id
""")


async def size_history(
    session: AsyncSession, segment_id: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    z = segment_sizes.c
    rows = await session.execute(
        sa.select(z.at, z.members)
        .where(z.segment_id == segment_id, z.at >= start, z.at < end)
        .order_by(z.at)
    )
    return [{"at": r.at, "members": r.members} for r in rows]


async def list_customers(
    session: AsyncSession,
    *,
    after: str,
    limit: int,
    stage: str | None,
    rfm_segments: Sequence[str] | None,
) -> list[dict[str, Any]]:
    c = customers
    rows = await session.execute(
        sa.select(c.c.customer_id, c.c.stage, c.c.stage_at, c.c.traits, c.c.scores)
        .where(c.c.customer_id > after, *_customer_filters(stage, rfm_segments))
        .order_by(c.c.customer_id)
        .limit(limit)
    )
    return [_listed(r) for r in rows]


async def memberships_of(session: AsyncSession, customer_id: str) -> list[dict[str, Any]]:
    """The segments one id is in (the privacy export)."""
    m, s = segment_members, segments
    rows = await session.execute(
        sa.select(m.c.segment_id, s.c.name, m.c.since, m.c.segment_version)
        .join(s, s.c.id == m.c.segment_id)
        .where(m.c.customer_id == customer_id)
        .order_by(m.c.segment_id)
    )
    return [dict(r._mapping) for r in rows]


# --- journeys -------------------------------------------------------------------------


async def enabled_journeys(session: AsyncSession) -> list[tuple[str, int, dict[str, Any]]]:
    return await enabled_triggers(session, kind=JOURNEYS)


async def journey_versions_of(
    session: AsyncSession, keys: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], tuple[dict[str, Any], bool]]:
    """As trigger_versions_of: runs finish on the version they entered with."""
    return await trigger_versions_of(session, keys, kind=JOURNEYS)


@dataclass(frozen=True)
class RunEntry:
    """A customer's earlier entry into a journey, for re-entry control."""

    journey_id: str
    key: str
    cause_time: datetime


async def journey_entries(
    session: AsyncSession, customer_ids: Sequence[str], journey_ids: Sequence[str]
) -> dict[str, list[RunEntry]]:
    r = journey_runs
    rows = await session.execute(
        sa.select(r.c.customer_id, r.c.journey_id, r.c.entry_key, r.c.cause_time).where(
            r.c.customer_id == _IDS, r.c.journey_id == sa.any_(sa.bindparam("journeys"))
        ),
        {"ids": list(customer_ids), "journeys": list(journey_ids)},
    )
    out: dict[str, list[RunEntry]] = {}
    for row in rows:
        out.setdefault(row.customer_id, []).append(
            RunEntry(row.journey_id, row.entry_key, row.cause_time)
        )
    return out


RUN_COLUMNS = (
    "id",
    "journey_id",
    "journey_version",
    "customer_id",
    "entry_key",
    "status",
    "step_id",
    "due_at",
    "step_at",
    "cause_event",
    "cause_time",
    "occasion",
    "entered_at",
)
_INSERT_RUNS = (
    _insert_arrays(journey_runs, RUN_COLUMNS)
    .on_conflict_do_nothing(index_elements=["journey_id", "customer_id", "entry_key"])
    .returning(journey_runs.c.id)
)


async def insert_runs(session: AsyncSession, rows: list[dict[str, Any]]) -> set[str]:
    """New runs (rows with the keys of RUN_COLUMNS); an entry already there (a replay)
    is kept. Returns the ids inserted."""
    if not rows:
        return set()
    inserted = await session.execute(_INSERT_RUNS, _arrays(journey_runs, RUN_COLUMNS, rows))
    return set(inserted.scalars())


async def save_decisions(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Why customers did not enter (the latest word per journey and customer)."""
    if not rows:
        return
    latest = {(r["journey_id"], r["customer_id"]): r for r in rows}
    stmt = insert(journey_decisions).values(list(latest.values()))
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["journey_id", "customer_id"],
            set_={
                "at": stmt.excluded.at,
                "reason": stmt.excluded.reason,
                "detail": stmt.excluded.detail,
            },
        )
    )


@dataclass
class Run:
    """A run as the runner and the consumer change it."""

    id: str
    journey_id: str
    journey_version: int
    customer_id: str
    entry_key: str
    status: str
    step_id: str | None
    due_at: datetime | None
    step_at: datetime
    seen: dict[str, list[str]]
    arm: str | None
    cause_event: str
    cause_time: datetime
    occasion: dict[str, Any] | None
    entered_at: datetime
    finished_at: datetime | None
    exit_reason: str | None


_RUN_FIELDS = [journey_runs.c[f] for f in Run.__dataclass_fields__]
OPEN_RUN = ("active", "waiting")


async def open_runs(
    session: AsyncSession, customer_ids: Sequence[str], journey_ids: Sequence[str]
) -> list[Run]:
    """The customers' runs still under way in these journeys, locked (the caller holds
    the customers' locks first, as the runner does)."""
    r = journey_runs
    rows = await session.execute(
        sa.select(*_RUN_FIELDS)
        .where(
            r.c.customer_id == _IDS,
            r.c.journey_id == sa.any_(sa.bindparam("journeys")),
            r.c.status.in_(OPEN_RUN),
        )
        .order_by(r.c.id)
        .with_for_update(),
        {"ids": list(customer_ids), "journeys": list(journey_ids)},
    )
    return [Run(*row) for row in rows]


_DUE_RUNS = sa.text("""
    SELECT id, customer_id FROM campaigns.journey_runs
    WHERE status IN ('active', 'waiting') AND due_at <= :now
    ORDER BY due_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
""")
# The claimed runs' customers, locked as a consumed batch locks them, but skipping those a
# batch holds: their runs wait for the next pass instead of a lock (no deadlock with a
# batch that holds the customer and waits for the run).
_LOCK_FREE_CUSTOMERS = (
    sa.select(customers)
    .where(customers.c.customer_id == _IDS)
    .order_by(customers.c.customer_id)
    .with_for_update(skip_locked=True)
)


async def claim_due_runs(
    session: AsyncSession, now: datetime, limit: int
) -> tuple[list[Run], dict[str, CustomerState]]:
    """Runs due by `now` (SKIP LOCKED: replicas share them) whose customers could be
    locked, with those customers."""
    due = (await session.execute(_DUE_RUNS, {"now": now, "limit": limit})).all()
    if not due:
        return [], {}
    rows = await session.execute(_LOCK_FREE_CUSTOMERS, {"ids": sorted({c for _, c in due})})
    states = {r.customer_id: _state(r) for r in rows}
    ids = [i for i, c in due if c in states]
    r = journey_runs
    runs = await session.execute(sa.select(*_RUN_FIELDS).where(r.c.id == _IDS), {"ids": ids})
    return [Run(*row) for row in runs], states


_SAVE_RUN_COLUMNS = ("id", "status", "step_id", "due_at", "step_at", "seen", "arm",
                     "finished_at", "exit_reason")  # fmt: skip
_SAVED_RUNS = (
    sa.func.unnest(*(_array_param(journey_runs.c[n]) for n in _SAVE_RUN_COLUMNS))
    .table_valued(*(sa.column(n) for n in _SAVE_RUN_COLUMNS))
    .render_derived(name="v")
)
_SAVE_RUNS = (
    journey_runs.update()
    .where(journey_runs.c.id == _SAVED_RUNS.c.id)
    .values(
        {
            n: sa.cast(_SAVED_RUNS.c[n], JSONB) if _json(journey_runs.c[n]) else _SAVED_RUNS.c[n]
            for n in _SAVE_RUN_COLUMNS
            if n != "id"
        }
    )
)


async def save_runs(session: AsyncSession, runs: Sequence[Run]) -> None:
    if runs:
        rows = [{n: getattr(run, n) for n in _SAVE_RUN_COLUMNS} for run in runs]
        await session.execute(_SAVE_RUNS, _arrays(journey_runs, _SAVE_RUN_COLUMNS, rows))


STEP_COLUMNS = ("run_id", "step_id", "journey_id", "at", "late_seconds", "outcome", "arm",
                "action_id")  # fmt: skip
_INSERT_STEPS = _insert_arrays(journey_steps, STEP_COLUMNS)


async def insert_steps(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """The steps runs went through. The key (run, step) makes a second run of a step an
    error that rolls its transaction back: once per entry, whatever happens."""
    if rows:
        await session.execute(_INSERT_STEPS, _arrays(journey_steps, STEP_COLUMNS, rows))


async def record_journey_conversions(
    session: AsyncSession, conversions: Sequence[tuple[str, str, datetime, int]]
) -> None:
    """(journey, customer, time, window seconds): runs entered at most a window before
    the conversion event are converted (the first one counts)."""
    if not conversions:
        return
    r = journey_runs
    c = sa.values(
        sa.column("journey_id", sa.Text),
        sa.column("customer_id", sa.Text),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("window", sa.Integer),
        name="c",
    ).data(list(conversions))
    window = sa.func.make_interval(0, 0, 0, 0, 0, 0, c.c.window)
    await session.execute(
        r.update()
        .where(
            r.c.journey_id == c.c.journey_id,
            r.c.customer_id == c.c.customer_id,
            r.c.converted_at.is_(None),
            r.c.cause_time <= c.c.at,
            c.c.at <= r.c.cause_time + window,
        )
        .values(converted_at=c.c.at)
    )


async def customer_runs(session: AsyncSession, customer_id: str) -> list[dict[str, Any]]:
    r = journey_runs
    rows = await session.execute(
        sa.select(
            r.c.id,
            r.c.journey_id,
            r.c.journey_version,
            r.c.status,
            r.c.step_id,
            r.c.due_at,
            r.c.entered_at,
            r.c.finished_at,
            r.c.exit_reason,
            r.c.converted_at,
            r.c.arm,
        )
        .where(r.c.customer_id == customer_id)
        .order_by(r.c.journey_id, r.c.entered_at)
    )
    out = [{**row._mapping, "steps": []} for row in rows]
    s = journey_steps
    steps = await session.execute(
        sa.select(s.c.run_id, s.c.step_id, s.c.at, s.c.outcome, s.c.late_seconds, s.c.action_id)
        .where(s.c.run_id == _IDS)
        .order_by(s.c.seq),
        {"ids": [r["id"] for r in out]},
    )
    by_run = {r["id"]: r for r in out}
    for step in steps:
        row = dict(step._mapping)
        by_run[row.pop("run_id")]["steps"].append(row)
    return out


async def customer_decisions(session: AsyncSession, customer_id: str) -> dict[str, dict[str, Any]]:
    d = journey_decisions
    rows = await session.execute(
        sa.select(d.c.journey_id, d.c.at, d.c.reason, d.c.detail).where(
            d.c.customer_id == customer_id
        )
    )
    return {row.journey_id: dict(row._mapping) for row in rows}


async def journey_funnel(session: AsyncSession, journey_id: str) -> dict[str, Any]:
    """Per step: how many runs went through it by outcome, and how many wait on it now;
    per arm: runs and conversions; runs by status and exit reason."""
    s, r = journey_steps, journey_runs
    steps = await session.execute(
        sa.select(s.c.step_id, s.c.outcome, sa.func.count(), sa.func.max(s.c.late_seconds))
        .where(s.c.journey_id == journey_id)
        .group_by(s.c.step_id, s.c.outcome)
    )
    waiting = await session.execute(
        sa.select(r.c.step_id, sa.func.count())
        .where(r.c.journey_id == journey_id, r.c.status == "waiting")
        .group_by(r.c.step_id)
    )
    runs = await session.execute(
        sa.select(r.c.status, r.c.exit_reason, sa.func.count(), sa.func.count(r.c.converted_at))
        .where(r.c.journey_id == journey_id)
        .group_by(r.c.status, r.c.exit_reason)
    )
    # A run's arm is the outcome of its split step.
    arm = (
        sa.select(s.c.run_id, s.c.step_id, s.c.outcome)
        .where(s.c.journey_id == journey_id, s.c.outcome.like("arm:%"))
        .subquery()
    )
    arms = await session.execute(
        sa.select(arm.c.step_id, arm.c.outcome, sa.func.count(), sa.func.count(r.c.converted_at))
        .join(r, r.c.id == arm.c.run_id)
        .group_by(arm.c.step_id, arm.c.outcome)
    )
    return {
        "steps": [tuple(row) for row in steps],
        "waiting": {row[0]: row[1] for row in waiting},
        "runs": [tuple(row) for row in runs],
        "arms": [tuple(row) for row in arms],
    }


# --- clock control --------------------------------------------------------------------


async def clock_offset(session: AsyncSession) -> float:
    return float(await session.scalar(sa.select(clock.c.offset_seconds)) or 0.0)


async def advance_clock(session: AsyncSession, seconds: float) -> float:
    stmt = insert(clock).values(id=1, offset_seconds=seconds)
    offset = await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={"offset_seconds": clock.c.offset_seconds + seconds}
        ).returning(clock.c.offset_seconds)
    )
    return float(offset or 0.0)


async def runs_in_flight(session: AsyncSession, journey_id: str) -> dict[int, int]:
    """Runs under way by the version they entered with."""
    r = journey_runs
    rows = await session.execute(
        sa.select(r.c.journey_version, sa.func.count())
        .where(r.c.journey_id == journey_id, r.c.status.in_(OPEN_RUN))
        .group_by(r.c.journey_version)
    )
    return {int(v): int(n) for v, n in rows}
