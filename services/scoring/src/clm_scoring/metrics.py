"""Scoring metrics, next to the ones every service exports."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

FIT_SECONDS = Histogram(
    "clm_scoring_fit_duration_seconds",
    "Time to fit the purchase and spend models.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_PARAMETER = Gauge(
    "clm_scoring_model_parameter",
    "Parameters of the model being served, by model and parameter name.",
    ["model", "parameter"],
)
MODEL_LOG_LIKELIHOOD = Gauge(
    "clm_scoring_model_log_likelihood", "Log-likelihood of the served purchase model's fit."
)
MODEL_INFO = Gauge(
    "clm_scoring_model_info", "1 for the model kind and version being served.", ["model", "version"]
)
MODEL_AGE = Gauge("clm_scoring_model_age_seconds", "Seconds since the served model was fitted.")
SCORES_COMPUTED = Counter(
    "clm_scoring_scores_computed_total", "Customer scores computed, by trigger.", ["trigger"]
)
SCORES_PUBLISHED = Counter(
    "clm_scoring_scores_published_total",
    "Scores published to clm.scores (material moves only), by trigger.",
    ["trigger"],
)
IDENTITY_MERGES = Counter(
    "clm_scoring_identity_merges_total",
    "identity.linked events applied, by outcome: merged (orders held under the anonymous id "
    "moved to the customer), linked (nothing held yet; later purchases follow the link), "
    "refused (the anonymous id is linked to another customer already).",
    ["outcome"],
)
CHURN_PROBABILITY = Histogram(
    "clm_scoring_churn_probability",
    "Churn probability of each computed score.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
CLV = Histogram(
    "clm_scoring_clv",
    "CLV of each computed score (in the customers' currency).",
    buckets=(0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
CUSTOMERS_BY_CHURN = Gauge(
    "clm_scoring_customers_by_churn_probability",
    "Scored customers per tenth of churn probability, as of the last full rescore.",
    ["bucket"],
)

_fitted_at: float | None = None


def served(model: str, version: int | None, params: dict[str, float], ll: float | None) -> None:
    MODEL_PARAMETER.clear()
    for name, value in params.items():
        MODEL_PARAMETER.labels(model, name).set(value)
    MODEL_INFO.clear()
    MODEL_INFO.labels(model, str(version)).set(1)
    if ll is not None:
        MODEL_LOG_LIKELIHOOD.set(ll)


def model_fitted_at(epoch_seconds: float) -> None:
    global _fitted_at
    _fitted_at = epoch_seconds


# Read at scrape time, so the age keeps growing between refits.
MODEL_AGE.set_function(lambda: time.time() - _fitted_at if _fitted_at is not None else 0.0)
