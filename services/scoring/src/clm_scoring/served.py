"""A stored model version as served (clm_events.scoremodel.ServedModel), built in one
place for the `lifecycle.score_model_served` event, `GET /v1/model` and scoring itself, so
what the stage engine evaluates is what scoring scores with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clm_events.rfm import Cuts
from clm_events.scoremodel import ServedModel
from clm_scoring.domain.bgnbd import BgNbdParams
from clm_scoring.domain.gammagamma import GammaGammaParams
from clm_scoring.domain.paretonbd import ParetoNbdParams
from clm_scoring.domain.scores import Heuristic, Model, ModelKind, Policy
from clm_scoring.domain.summary import TimeUnit

FIELDS = (
    "version",
    "model",
    "time_unit",
    "purchase_params",
    "spend_params",
    "typical_gap",
    "clv_top_decile",
    "fitted_at",
)


def served_model(
    row: Mapping[str, Any], policy: Policy, cuts: Mapping[str, Any] | None = None
) -> ServedModel:
    """The model_versions row as served, with the rfm_cuts row `cuts` (None: no RFM
    section). Versions stored before they kept an estimator, horizon and discount were
    maximum-likelihood fits (or the heuristic), served with the configured `policy`."""
    raw = {k: row[k] for k in FIELDS}
    estimator = row.get("estimator")
    if estimator is None and row["model"] != ModelKind.heuristic.value:
        estimator = "mle"
    horizon, rate = row.get("horizon_months"), row.get("monthly_discount_rate")
    return ServedModel.from_json(
        {
            **raw,
            "estimator": estimator,
            "horizon_months": policy.horizon_months if horizon is None else horizon,
            "monthly_discount_rate": policy.monthly_discount_rate if rate is None else rate,
            "rfm": cuts_of(cuts).to_json() if cuts else None,
        }
    )


def cuts_of(row: Mapping[str, Any]) -> Cuts:
    """An rfm_cuts row as the shared cut points."""
    return Cuts(
        tuple(row["recency"]), tuple(row["frequency"]), tuple(row["monetary"]), row["version"]
    )


def model_of(served: ServedModel) -> Model:
    """The vectorised scorer's model for the served one."""
    kind = ModelKind(served.model)
    purchase: BgNbdParams | ParetoNbdParams | None = None
    if served.purchase_params is not None and kind is not ModelKind.heuristic:
        cls = BgNbdParams if kind is ModelKind.bgnbd else ParetoNbdParams
        purchase = cls(**served.purchase_params)
    spend = GammaGammaParams(**served.spend_params) if served.spend_params else None
    return Model(
        kind,
        TimeUnit(served.time_unit),
        purchase=purchase,
        spend=spend,
        heuristic=Heuristic(served.typical_gap),
        version=served.version,
    )
