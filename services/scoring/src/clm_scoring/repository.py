"""Every SQL statement of the scoring service."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by, insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.rfm import Cuts
from clm_scoring.domain.arrays import Floats, Frequencies, Spends
from clm_scoring.domain.fitting import FitReport
from clm_scoring.domain.scores import Policy
from clm_scoring.domain.summary import Order, PurchaseHistory, TimeUnit
from clm_scoring.models import (
    customers,
    identity_links,
    model_versions,
    orders,
    rfm_cuts,
    rfm_moves,
    scores,
)

REFIT_LOCK = zlib.crc32(b"clm-scoring:refit")
# Advisory locks live in one key space for the whole database: the seed keeps scoring's
# locks on customer ids apart from other services' locks on the same ids.
ID_LOCK_SEED = zlib.crc32(b"clm-scoring:identity")


# -- orders and histories -------------------------------------------------------------


async def record_purchases(
    session: AsyncSession, purchases: Mapping[tuple[str, str], tuple[date, Decimal]]
) -> None:
    """(customer, order) -> (day, amount); a repeated order keeps its latest values."""
    if not purchases:
        return
    stmt = insert(orders)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[orders.c.customer_id, orders.c.order_id],
            set_={"purchased_on": stmt.excluded.purchased_on, "amount": stmt.excluded.amount},
        ),
        [
            {"customer_id": c, "order_id": o, "purchased_on": d, "amount": a}
            for (c, o), (d, a) in purchases.items()
        ],
    )


async def record_refunds(session: AsyncSession, refunds: Mapping[tuple[str, str], Decimal]) -> None:
    """(customer, order) -> refunded amount, added to what was refunded before."""
    if not refunds:
        return
    stmt = insert(orders)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[orders.c.customer_id, orders.c.order_id],
            set_={"refunded": orders.c.refunded + stmt.excluded.refunded},
        ),
        [{"customer_id": c, "order_id": o, "refunded": a} for (c, o), a in refunds.items()],
    )


async def orders_of(session: AsyncSession, customer_ids: Iterable[str]) -> dict[str, list[Order]]:
    ids = list(customer_ids)
    rows = await session.execute(
        sa.select(orders.c.customer_id, orders.c.purchased_on, orders.c.amount, orders.c.refunded)
        .where(orders.c.customer_id.in_(ids), orders.c.purchased_on.is_not(None))
        .order_by(orders.c.customer_id)
    )
    out: dict[str, list[Order]] = {c: [] for c in ids}
    for r in rows:
        out[r.customer_id].append(Order(r.purchased_on, r.amount, r.refunded))
    return out


async def save_histories(
    session: AsyncSession, histories: Mapping[str, PurchaseHistory | None]
) -> None:
    """Upsert histories; None (nothing left after refunds) removes the customer's
    history. Their score row stays, unread without a history, for what consumers were
    last told: a later purchase scores them again with the next event id (from count 1
    again, its id would repeat one consumers have seen, and they would drop it)."""
    gone = [c for c, h in histories.items() if h is None]
    if gone:
        await session.execute(customers.delete().where(customers.c.customer_id.in_(gone)))
    rows = [
        {
            "customer_id": c,
            "first_purchase_on": h.first_day,
            "last_purchase_on": h.last_day,
            "purchase_days": h.purchase_days,
            "first_spend": h.first_spend,
            "repeat_spend": h.repeat_spend,
        }
        for c, h in sorted(histories.items())
        if h is not None
    ]
    if rows:
        stmt = insert(customers)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[customers.c.customer_id],
                set_={k: stmt.excluded[k] for k in rows[0] if k != "customer_id"},
            ),
            rows,
        )


# -- identity links -------------------------------------------------------------------


async def lock_ids(session: AsyncSession, ids: Iterable[str]) -> None:
    """Hold these customer ids for this transaction, in one sorted order so two writers
    never deadlock on them. A row lock cannot guard an id with no row yet, and an
    anonymous id's first purchase must not race the link that merges it."""
    if ids := sorted(set(ids)):
        await session.execute(_LOCK_IDS, {"ids": ids, "seed": ID_LOCK_SEED})


_LOCK_IDS = sa.text(
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(id, :seed) AS k "
    "FROM unnest(:ids) AS id ORDER BY k) AS ids"
).bindparams(sa.bindparam("ids", type_=ARRAY(sa.Text)), sa.bindparam("seed", type_=sa.BigInteger))


async def links_of(session: AsyncSession, ids: Iterable[str]) -> dict[str, str]:
    """The known customer each of these ids is a merged anonymous id of (those that are)."""
    if not (ids := sorted(set(ids))):
        return {}
    i = identity_links.c
    rows = await session.execute(
        sa.select(i.anonymous_id, i.customer_id).where(i.anonymous_id.in_(ids))
    )
    return {r.anonymous_id: r.customer_id for r in rows}


async def add_links(session: AsyncSession, links: Mapping[str, str]) -> None:
    """Anonymous id -> customer id; an anonymous id linked already keeps its link."""
    if links:
        rows = [{"anonymous_id": a, "customer_id": c} for a, c in sorted(links.items())]
        await session.execute(insert(identity_links).on_conflict_do_nothing(), rows)


async def move_orders(session: AsyncSession, links: Mapping[str, str]) -> set[str]:
    """Move each anonymous id's orders to its customer (anonymous id -> customer id); an
    order both hold meets in one row, as if all its events had carried the customer id:
    a purchase's day and amount, and the sum of the refunds. Returns the anonymous ids
    that had orders."""
    if not links:
        return set()
    anonymous, known = zip(*sorted(links.items()), strict=True)
    rows = await session.execute(_MOVE_ORDERS, {"anonymous": anonymous, "known": known})
    return {r.anonymous_id for r in rows}


# Grouped before the insert: two anonymous ids merging into one customer in a batch may
# hold the same order, and one statement cannot update a row twice.
_MOVE_ORDERS = sa.text(
    f"""
    WITH moved AS (
        DELETE FROM {orders.fullname} AS o
        USING unnest(:anonymous, :known) AS l(anonymous_id, customer_id)
        WHERE o.customer_id = l.anonymous_id
        RETURNING l.anonymous_id, l.customer_id, o.order_id, o.purchased_on, o.amount,
            o.refunded
    ), merged AS (
        INSERT INTO {orders.fullname} AS o (customer_id, order_id, purchased_on, amount, refunded)
        SELECT customer_id, order_id, max(purchased_on), max(amount), sum(refunded)
        FROM moved GROUP BY customer_id, order_id
        ON CONFLICT (customer_id, order_id) DO UPDATE SET
            purchased_on = coalesce(o.purchased_on, excluded.purchased_on),
            amount = coalesce(o.amount, excluded.amount),
            refunded = o.refunded + excluded.refunded
    )
    SELECT DISTINCT anonymous_id FROM moved
    """
).bindparams(
    sa.bindparam("anonymous", type_=ARRAY(sa.Text)), sa.bindparam("known", type_=ARRAY(sa.Text))
)


async def delete_customers(session: AsyncSession, ids: Iterable[str]) -> None:
    """The histories and scores of these ids (their orders are moved first). The history
    goes first: a rescore page holding it locks it before it writes the score."""
    if ids := sorted(set(ids)):
        await session.execute(customers.delete().where(customers.c.customer_id.in_(ids)))
        await session.execute(scores.delete().where(scores.c.customer_id.in_(ids)))
        await session.execute(rfm_moves.delete().where(rfm_moves.c.customer_id.in_(ids)))


# -- scores ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToScore:
    customer_id: str
    history: PurchaseHistory
    published_churn_probability: float | None
    published_clv: float | None
    published_model: str | None
    published_count: int
    rfm_segment: str | None = None  # the segment of the stored score
    published_rfm_cell: str | None = None


def _to_score(rows: Iterable[Any]) -> list[ToScore]:
    return [
        ToScore(
            r.customer_id,
            PurchaseHistory(
                r.first_purchase_on,
                r.last_purchase_on,
                r.purchase_days,
                r.first_spend,
                r.repeat_spend,
            ),
            r.published_churn_probability,
            r.published_clv,
            r.published_model,
            r.published_count or 0,
            r.rfm_segment,
            r.published_rfm_cell,
        )
        for r in rows
    ]


def _to_score_query() -> sa.Select[Any]:
    return (
        sa.select(
            customers,
            scores.c.published_churn_probability,
            scores.c.published_clv,
            scores.c.published_model,
            scores.c.published_count,
            scores.c.rfm_segment,
            scores.c.published_rfm_cell,
        )
        .select_from(customers.outerjoin(scores, scores.c.customer_id == customers.c.customer_id))
        .order_by(customers.c.customer_id)
    )


async def to_score(session: AsyncSession, customer_ids: Iterable[str]) -> list[ToScore]:
    # Lock the rows: a concurrent rescore page must not publish the same move twice.
    c = customers.c
    lock = sa.select(c.customer_id).where(c.customer_id.in_(list(customer_ids)))
    return await _locked_to_score(session, lock.order_by(c.customer_id).with_for_update())


async def page_to_score(session: AsyncSession, after: str | None, limit: int) -> list[ToScore]:
    """The next page of customers by id (keyset pagination), for the scheduled rescore."""
    c = customers.c
    lock = sa.select(c.customer_id).order_by(c.customer_id).limit(limit)
    if after is not None:
        lock = lock.where(c.customer_id > after)
    return await _locked_to_score(session, lock.with_for_update(skip_locked=True))


async def _locked_to_score(session: AsyncSession, lock: sa.Select[Any]) -> list[ToScore]:
    """Lock the customers first, then read them with their scores in a statement of its
    own: after waiting for a lock, a locking join would return the score row as it was
    before the lock holder's commit (READ COMMITTED re-reads only the locked row), and a
    stale published count publishes one event id twice."""
    ids = list(await session.scalars(lock))
    if not ids:
        return []
    return _to_score(
        await session.execute(_to_score_query().where(customers.c.customer_id.in_(ids)))
    )


async def save_scores(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    stmt = insert(scores)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[scores.c.customer_id],
            set_={k: stmt.excluded[k] for k in rows[0] if k != "customer_id"},
        ),
        list(rows),
    )


async def score_of(session: AsyncSession, customer_id: str) -> Any | None:
    query = (
        sa.select(scores, customers)
        .join(customers, customers.c.customer_id == scores.c.customer_id)
        .where(scores.c.customer_id == customer_id)
    )
    return (await session.execute(query)).first()


async def churn_distribution(session: AsyncSession) -> dict[int, int]:
    """Customers per tenth of churn probability (0 = [0, 0.1), ..., 9 = [0.9, 1])."""
    bucket = sa.func.least(sa.func.floor(scores.c.churn_probability * 10), 9).label("bucket")
    scored = scores.join(customers, customers.c.customer_id == scores.c.customer_id)
    rows = await session.execute(
        sa.select(bucket, sa.func.count()).select_from(scored).group_by(bucket)
    )
    return {int(b): int(n) for b, n in rows}


# -- RFM ------------------------------------------------------------------------------


async def rfm_measures(session: AsyncSession, as_of: date) -> list[Floats]:
    """Every customer's recency (days since the last purchase as of `as_of`), frequency
    (purchase days) and monetary value (spend net of refunds), as arrays."""
    c = customers.c
    recency = sa.literal(as_of) - c.last_purchase_on
    return await _arrays(
        session, sa.select(recency, c.purchase_days, c.first_spend + c.repeat_spend)
    )


async def save_cuts(
    session: AsyncSession, cuts: Cuts, *, as_of: date, customers: int, trigger: str
) -> Mapping[str, Any]:
    row = await session.execute(
        rfm_cuts.insert()
        .values(
            as_of=as_of,
            customers=customers,
            trigger=trigger,
            recency=list(cuts.recency),
            frequency=list(cuts.frequency),
            monetary=list(cuts.monetary),
        )
        .returning(*rfm_cuts.c)
    )
    return dict(row.mappings().one())


async def current_cuts(session: AsyncSession) -> Mapping[str, Any] | None:
    """The latest cut points: the ones scores are computed under."""
    query = sa.select(rfm_cuts).order_by(rfm_cuts.c.version.desc()).limit(1)
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def last_published_cuts(session: AsyncSession) -> Mapping[str, Any] | None:
    """The latest cut points announced with the served model."""
    query = (
        sa.select(rfm_cuts)
        .where(rfm_cuts.c.published_at.is_not(None))
        .order_by(rfm_cuts.c.version.desc())
        .limit(1)
    )
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def mark_cuts_published(session: AsyncSession, version: int) -> None:
    await session.execute(
        rfm_cuts.update().where(rfm_cuts.c.version == version).values(published_at=sa.func.now())
    )


async def prune_moves(session: AsyncSession, before: datetime) -> int:
    """Delete segment changes older than `before`, but each customer's latest one before
    it: their segment at `before`, so moves over any window from `before` on stay exact.
    Returns the rows deleted."""
    result = await session.execute(_PRUNE_MOVES, {"before": before})
    return int(cast("CursorResult[Any]", result).rowcount or 0)


_PRUNE_MOVES = sa.text(
    f"""
    DELETE FROM {rfm_moves.fullname} AS m
    WHERE m.moved_at < :before AND EXISTS (
        SELECT 1 FROM {rfm_moves.fullname} AS later
        WHERE later.customer_id = m.customer_id AND later.moved_at < :before
          AND (later.moved_at, later.id) > (m.moved_at, m.id)
    )
    """
).bindparams(sa.bindparam("before", type_=sa.DateTime(timezone=True)))


async def add_moves(session: AsyncSession, moves: Sequence[dict[str, Any]]) -> None:
    if moves:
        await session.execute(rfm_moves.insert(), list(moves))


async def rfm_grid(session: AsyncSession) -> list[Any]:
    """Customers and revenue per scored (R, F) pair; revenue is spend net of refunds."""
    s, c = scores.c, customers.c
    return list(
        await session.execute(
            sa.select(
                s.rfm_recency,
                s.rfm_frequency,
                sa.func.count().label("customers"),
                sa.func.coalesce(sa.func.sum(c.first_spend + c.repeat_spend), 0).label("revenue"),
            )
            .join(customers, c.customer_id == s.customer_id)
            .group_by(s.rfm_recency, s.rfm_frequency)
        )
    )


async def rfm_flows(session: AsyncSession, start: datetime, end: datetime) -> list[Any]:
    """(from, to, customers): each customer's segment before `start` (null: none yet)
    and before `end`, for those whose segment differs."""
    return list(await session.execute(_FLOWS, {"start": start, "end": end}))


_SEGMENT_BEFORE = f"""
    SELECT DISTINCT ON (customer_id) customer_id, to_segment AS segment
    FROM {rfm_moves.fullname} WHERE moved_at < :{{}}
    ORDER BY customer_id, moved_at DESC, id DESC
"""
_FLOWS = sa.text(
    f"""
    WITH before AS ({_SEGMENT_BEFORE.format("start")}),
         after AS ({_SEGMENT_BEFORE.format("end")})
    SELECT b.segment AS from_segment, a.segment AS to_segment, count(*) AS customers
    FROM after AS a LEFT JOIN before AS b USING (customer_id)
    WHERE b.segment IS DISTINCT FROM a.segment
    GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2
    """
).bindparams(
    sa.bindparam("start", type_=sa.DateTime(timezone=True)),
    sa.bindparam("end", type_=sa.DateTime(timezone=True)),
)


# -- fitting data and model versions --------------------------------------------------


async def fitting_data(
    session: AsyncSession, as_of: date, unit: TimeUnit
) -> tuple[Frequencies | None, Spends | None, date | None]:
    """Every customer's (x, t_x, T) as distinct rows with counts (the database does the
    compression), repeat buyers' mean spends, and the first purchase date."""
    x, span, age = _summary_columns(as_of)
    rows = (
        sa.select(x.label("x"), span.label("span"), age.label("age"), sa.func.count().label("n"))
        .group_by(x, span, age)
        .subquery()
    )
    # Ordered, so that a refit on the same data sums in the same order and gives the very
    # same parameters (an identical model is not announced again).
    order = (rows.c.x, rows.c.span, rows.c.age)
    f = await _arrays(session, sa.select(*rows.c), order)
    if f[0].size == 0:
        return None, None, None
    frequencies = Frequencies.of(f[0], f[1] / unit.days, f[2] / unit.days, f[3])
    c = customers.c
    repeat = sa.select(x, c.repeat_spend / x).where(c.purchase_days > 1, c.repeat_spend > 0)
    s = await _arrays(session, repeat.add_columns(c.customer_id), (c.customer_id,), drop=1)
    spends = Spends.of(s[0], s[1]) if s[0].size else None
    first = await session.scalar(sa.select(sa.func.min(c.first_purchase_on)))
    return frequencies, spends, first


async def _arrays(
    session: AsyncSession, query: sa.Select[Any], order: Sequence[Any] = (), drop: int = 0
) -> list[Floats]:
    """The query's columns (but the last `drop`) as float arrays, in `order`: one row of
    arrays, where a row per customer would cost Python objects by the hundred thousand."""
    q = query.subquery()
    columns = list(q.c)[: len(q.c) - drop]
    keys = [q.c[k.key] for k in order]
    # Aggregates of one query see its rows in one order, so the arrays line up.
    values = [sa.cast(v, sa.Float) for v in columns]
    aggregated = sa.select(
        *(sa.func.array_agg(aggregate_order_by(v, *keys) if keys else v) for v in values)
    )
    row = (await session.execute(aggregated)).one()
    return [np.asarray(v if v is not None else [], dtype=np.float64) for v in row]


def _summary_columns(as_of: date) -> tuple[Any, Any, Any]:
    """x, t_x and T in days, as `summary.summarize` computes them."""
    x = customers.c.purchase_days - 1
    span = customers.c.last_purchase_on - customers.c.first_purchase_on
    age = sa.func.greatest(sa.literal(as_of) - customers.c.first_purchase_on, span)
    return x, span, age


@dataclass(frozen=True)
class Base:
    """Every customer's summary (x, t_x, T in the unit; spends) as column arrays."""

    x: Floats
    t_x: Floats
    T: Floats
    mean_repeat_spend: Floats
    mean_spend: Floats


async def base(session: AsyncSession, as_of: date, unit: TimeUnit) -> Base:
    """Every customer with a purchase history, as the scheduled rescore scores them."""
    x, span, age = _summary_columns(as_of)
    c = customers.c
    mean_repeat = sa.case((x > 0, c.repeat_spend / x), else_=0)
    mean = (c.first_spend + c.repeat_spend) / c.purchase_days
    a = await _arrays(session, sa.select(x, span, age, mean_repeat, mean))
    return Base(a[0], a[1] / unit.days, a[2] / unit.days, a[3], a[4])


async def refit_lock(session: AsyncSession, *, wait: bool) -> bool:
    """One refit at a time across replicas (held until the transaction ends): wait for
    it, or return False at once if another refit holds it."""
    if wait:
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock(REFIT_LOCK)))
        return True
    return bool(await session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(REFIT_LOCK))))


async def save_model(
    session: AsyncSession,
    report: FitReport,
    *,
    window_start: date | None,
    window_end: date,
    trigger: str,
    clv_top_decile: float | None,
    policy: Policy,
) -> Mapping[str, Any]:
    """Store a new model version; return its row."""
    m = report.model
    row = (
        await session.execute(
            model_versions.insert()
            .values(
                model=m.kind.value,
                estimator=report.estimator.value,
                time_unit=m.time_unit.value,
                purchase_params=m.purchase.as_dict() if m.purchase else None,
                spend_params=m.spend.as_dict() if m.spend else None,
                typical_gap=m.heuristic.typical_gap,
                customers=report.customers,
                repeat_customers=report.repeat_customers,
                log_likelihood=report.log_likelihood,
                spend_log_likelihood=report.spend_log_likelihood,
                window_start=window_start,
                window_end=window_end,
                duration_seconds=report.seconds,
                notes=report.notes,
                trigger=trigger,
                clv_top_decile=clv_top_decile,
                horizon_months=policy.horizon_months,
                monthly_discount_rate=policy.monthly_discount_rate,
            )
            .returning(*model_versions.c)
        )
    ).mappings()
    return dict(row.one())


async def current_model(session: AsyncSession) -> Mapping[str, Any] | None:
    """The latest model version: the one served."""
    query = sa.select(model_versions).order_by(model_versions.c.version.desc()).limit(1)
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def last_published_model(session: AsyncSession) -> Mapping[str, Any] | None:
    """The latest model version whose lifecycle.score_model_served was queued."""
    query = (
        sa.select(model_versions)
        .where(model_versions.c.published_at.is_not(None))
        .order_by(model_versions.c.version.desc())
        .limit(1)
    )
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def mark_published(session: AsyncSession, version: int) -> None:
    await session.execute(
        model_versions.update()
        .where(model_versions.c.version == version)
        .values(published_at=sa.func.now())
    )


# -- privacy --------------------------------------------------------------------------


async def erase(session: AsyncSession, ids: list[str]) -> dict[str, int]:
    """Erase everything scoring holds of these ids (a customer and the anonymous ids
    linked to it) in the erasure's transaction; rows deleted per table. Model versions
    stay: their parameters, counts and top CLV decile are aggregates of no one."""
    ids = sorted(set(ids))
    # The erasure lock already keeps out every writer that takes the guard; these locks
    # make one that holds the ids or rows without it commit first, so that each delete
    # below sees what it wrote (READ COMMITTED).
    await lock_ids(session, ids)
    c, i = customers.c, identity_links.c
    await session.execute(sa.select(c.customer_id).where(c.customer_id.in_(ids)).with_for_update())
    return {
        "customers": await _deleted(session, customers.delete().where(c.customer_id.in_(ids))),
        "scores": await _deleted(session, scores.delete().where(scores.c.customer_id.in_(ids))),
        "orders": await _deleted(session, orders.delete().where(orders.c.customer_id.in_(ids))),
        "identity_links": await _deleted(
            session,
            identity_links.delete().where(sa.or_(i.anonymous_id.in_(ids), i.customer_id.in_(ids))),
        ),
        "rfm_moves": await _deleted(
            session, rfm_moves.delete().where(rfm_moves.c.customer_id.in_(ids))
        ),
    }


async def _deleted(session: AsyncSession, statement: sa.Delete) -> int:
    result = await session.execute(statement)
    return int(cast("CursorResult[Any]", result).rowcount or 0)


@dataclass(frozen=True)
class Held:
    """Every row scoring holds of one id, for its privacy export."""

    orders: list[Mapping[str, Any]]
    summary: Mapping[str, Any] | None
    score: Mapping[str, Any] | None
    linked_ids: list[Mapping[str, Any]]  # identity_links rows naming it, either side
    rfm_moves: list[Mapping[str, Any]]

    @property
    def found(self) -> bool:
        return bool(self.orders or self.summary or self.score or self.linked_ids or self.rfm_moves)


async def held_of(session: AsyncSession, customer_id: str) -> Held:
    o, i = orders.c, identity_links.c
    order_rows = await session.execute(
        sa.select(o.order_id, o.purchased_on, o.amount, o.refunded)
        .where(o.customer_id == customer_id)
        .order_by(o.order_id)
    )
    summary = await session.execute(
        sa.select(customers).where(customers.c.customer_id == customer_id)
    )
    score = await session.execute(sa.select(scores).where(scores.c.customer_id == customer_id))
    links = await session.execute(
        sa.select(identity_links)
        .where(sa.or_(i.anonymous_id == customer_id, i.customer_id == customer_id))
        .order_by(i.linked_at, i.anonymous_id)
    )
    m = rfm_moves.c
    moves = await session.execute(
        sa.select(m.moved_at, m.from_segment, m.to_segment)
        .where(m.customer_id == customer_id)
        .order_by(m.moved_at, m.id)
    )
    return Held(
        [dict(r) for r in order_rows.mappings()],
        _without_id(summary.mappings().first()),
        _without_id(score.mappings().first()),
        [dict(r) for r in links.mappings()],
        [dict(r) for r in moves.mappings()],
    )


def _without_id(row: sa.RowMapping | None) -> Mapping[str, Any] | None:
    return None if row is None else {k: v for k, v in row.items() if k != "customer_id"}
