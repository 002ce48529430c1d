"""Lifecycle KPIs over a window, from the transition history.

Every rate is a share of the customers it is a rate of: retention and churn count only
customers who were in a customer stage when the window began, conversion only customers
who were prospects in the window, so each lies in [0, 1].
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from clm_stage_engine import repository as repo

CUSTOMER_STAGES = ("onboarding", "active", "loyal", "advocate", "at_risk", "won_back")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


async def over(session: AsyncSession, start: datetime, end: datetime) -> dict[str, Any]:
    at_start, retained = await repo.retained(session, start, end, CUSTOMER_STAGES)
    churned = await repo.churned(session, start, end, CUSTOMER_STAGES, "lapsed")
    prospects = await repo.entered(session, start, end, "prospect")
    converted = await repo.moved(session, start, end, ["prospect"], "onboarding")
    clv = await repo.clv_by_stage(session)
    responses, promoters, detractors = await repo.nps_counts(session)
    return {
        "customers_at_start": at_start,
        "retention_rate": _rate(retained, at_start),
        "churn_rate": _rate(churned, at_start),
        "prospects": prospects,
        "conversion_rate": _rate(converted, prospects),
        "average_clv_by_stage": {k: round(v, 2) for k, v in sorted(clv.items())},
        "nps": {
            "score": round(100 * (promoters - detractors) / responses, 2) if responses else None,
            "responses": responses,
            "promoters": promoters,
            "detractors": detractors,
        },
    }
