"""HTTP: a customer's score, the served model, and an on-demand refit."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder

from clm_events.auth import AdminKey, ReadKey
from clm_scoring import repository
from clm_scoring.jobs import Jobs

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
      anonymous id was merged into (`anonymous_id`, `customer_id`, `linked_at`).

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
    }
    # Money as decimal strings, as events carry it: a float would round it.
    encoded: dict[str, Any] = jsonable_encoder(body, custom_encoder={Decimal: str})
    return encoded
