"""HTTP: a customer's score, the served model, and an on-demand refit."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder

from clm_events.auth import AdminKey, ReadKey
from clm_events.errors import unprocessable
from clm_events.rfm import segment
from clm_scoring import repository
from clm_scoring.jobs import Jobs, describe_cuts

router = APIRouter(prefix="/v1", tags=["scoring"])

CustomerId = Annotated[
    str, Path(min_length=1, max_length=256, description="The customer id (event subject).")
]


def _jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


@router.get("/customers/{customer_id}/score")
async def customer_score(customer_id: CustomerId, request: Request, _: ReadKey) -> dict[str, Any]:
    """The customer's latest score: P(alive), churn probability, expected purchases and
    spend over the horizon, CLV, and the summary it was computed from. A merged anonymous
    id answers with the customer it was merged into."""
    jobs = _jobs(request)
    async with jobs.sessions() as session:
        merged_into = (await repository.links_of(session, [customer_id])).get(customer_id)
        requested, customer_id = customer_id, merged_into or customer_id
        row = await repository.score_of(session, customer_id)
    if row is None:
        raise HTTPException(404, f"customer_id: no purchases recorded for {requested!r}")
    days = row.last_purchase_on - row.first_purchase_on
    return {
        "customer_id": customer_id,
        "p_alive": row.p_alive,
        "churn_probability": row.churn_probability,
        "expected_purchases": row.expected_purchases,
        "expected_spend": row.expected_spend,
        "clv": row.clv,
        "horizon_months": jobs.settings.horizon_months,
        "model": row.model,
        "model_version": row.model_version,
        "as_of": row.as_of,
        "scored_at": row.scored_at,
        "rfm": {
            "recency": row.rfm_recency,
            "frequency": row.rfm_frequency,
            "monetary": row.rfm_monetary,
            "cell": row.rfm_cell,
            "segment": row.rfm_segment,
            "cuts_version": row.rfm_version,
        },
        "summary": {
            "repeat_purchases": row.purchase_days - 1,
            "first_purchase_on": row.first_purchase_on,
            "last_purchase_on": row.last_purchase_on,
            "days_between_first_and_last": days.days,
        },
        **({"requested_id": requested} if requested != customer_id else {}),
    }


@router.get("/model")
async def model(request: Request, _: ReadKey) -> dict[str, Any]:
    """The served model: kind, estimator (mle, or map for the small-data model), version,
    parameters, top CLV decile, fit statistics, and notes on what is served and why."""
    return await _jobs(request).describe_model()


@router.post("/model/refit")
async def refit(request: Request, _: AdminKey) -> dict[str, Any]:
    """Fit now on every customer, store a new model version and rescore everyone with it.
    A refit already running (another replica, the schedule) is waited for first."""
    jobs = _jobs(request)
    described = await jobs.refit(trigger="api", wait=True)
    assert described is not None  # a waiting refit always fits
    await jobs.rescore_all()
    return described


@router.get("/privacy/customers/{customer_id}", tags=["privacy"])
async def privacy_export(customer_id: CustomerId, request: Request, _: AdminKey) -> dict[str, Any]:
    """Everything scoring holds about this id, for a data subject's access request (ingest
    assembles every service's answer into one document):

    - `orders`: each order (`order_id`, `purchased_on`, `amount`, `refunded`; amounts as
      decimal strings; `purchased_on` null when only a refund was seen);
    - `summary`: the purchase history the scores come from (first and last purchase day,
      days with a purchase, first and repeat spend), or null;
    - `score`: the current score (P(alive), churn probability, expected purchases and
      spend, CLV, model, version, as of, scored at) and what `clm.scores` was last told
      (`published_*`), or null;
    - `linked_ids`: the anonymous ids merged into this customer, or the customer this
      anonymous id was merged into (`anonymous_id`, `customer_id`, `linked_at`);
    - `rfm_moves`: each change of the customer's RFM segment (`moved_at`,
      `from_segment`, `to_segment`).

    200 with `found: false` and empty sections when nothing is held (never held, or
    erased)."""
    async with _jobs(request).sessions() as session:
        held = await repository.held_of(session, customer_id)
    body = {
        "service": "scoring",
        "customer_id": customer_id,
        "found": held.found,
        "orders": held.orders,
        "summary": held.summary,
        "score": held.score,
        "linked_ids": held.linked_ids,
        "rfm_moves": held.rfm_moves,
    }
    # Money as decimal strings, as events carry it: a float would round it.
    encoded: dict[str, Any] = jsonable_encoder(body, custom_encoder={Decimal: str})
    return encoded


@router.get("/rfm/cuts", tags=["rfm"])
async def rfm_cuts(request: Request, _: ReadKey) -> dict[str, Any]:
    """The current RFM cut points: version, when and as of which day they were computed,
    over how many customers, and the four cut points of recency (days since the last
    purchase), frequency (purchase days) and monetary (spend), ascending. Nulls before
    any (no customers yet)."""
    async with _jobs(request).sessions() as session:
        row = await repository.current_cuts(session)
    return describe_cuts(row)


@router.get("/rfm", tags=["rfm"])
async def rfm_grid(request: Request, _: ReadKey) -> dict[str, Any]:
    """The R x F grid: customers and revenue (spend net of refunds) in each of the 25
    cells, zeros included, under the cut-point version named; customers scored before
    any cut points existed are counted in `unscored`."""
    async with _jobs(request).sessions() as session:
        cuts = await repository.current_cuts(session)
        rows = await repository.rfm_grid(session)
    held = {(r.rfm_recency, r.rfm_frequency): r for r in rows}
    cells: list[dict[str, Any]] = [
        {
            "recency": r,
            "frequency": f,
            "segment": segment(r, f),
            "customers": held[r, f].customers if (r, f) in held else 0,
            "revenue": held[r, f].revenue if (r, f) in held else Decimal(0),
        }
        for r in range(5, 0, -1)
        for f in range(1, 6)
    ]
    unscored = held.get((None, None))
    body = {
        "cuts_version": cuts["version"] if cuts else None,
        "cells": cells,
        "customers": sum(c["customers"] for c in cells),
        "revenue": sum((c["revenue"] for c in cells), Decimal(0)),
        "unscored": unscored.customers if unscored else 0,
    }
    encoded: dict[str, Any] = jsonable_encoder(body, custom_encoder={Decimal: str})
    return encoded


@router.get("/rfm/moves", tags=["rfm"])
async def rfm_moves(
    request: Request,
    _: ReadKey,
    start: Annotated[datetime, Query(alias="from", description="Window start (inclusive).")],
    end: Annotated[datetime, Query(alias="to", description="Window end (exclusive).")],
) -> dict[str, Any]:
    """Customers moving between RFM segments over the window: each customer's segment
    just before `from` (null: none yet, a new customer) against the one just before
    `to`, counted per (from, to) pair; customers whose segment is the same at both ends
    are left out."""
    if start.tzinfo is None or end.tzinfo is None:
        raise unprocessable(
            "query", "from" if start.tzinfo is None else "to", msg="give a time zone offset"
        )
    if end < start:
        raise unprocessable("query", "to", msg="before from")
    async with _jobs(request).sessions() as session:
        rows = await repository.rfm_flows(session, start, end)
    moves = [{"from": r.from_segment, "to": r.to_segment, "customers": r.customers} for r in rows]
    return {"from": start, "to": end, "moves": moves}
