"""Scores from a customer's summary under the current model: P(alive), churn probability,
expected purchases and spend, and discounted CLV; and when a new score is worth
publishing.

Vectorised over customers (arrays in, arrays out) so that a nightly rescore of a million
customers is a few numpy passes; a single customer is an array of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from clm_scoring.domain import bgnbd, gammagamma, paretonbd
from clm_scoring.domain.arrays import Floats
from clm_scoring.domain.summary import TimeUnit


class ModelKind(StrEnum):
    bgnbd = "bgnbd"
    pareto_nbd = "pareto_nbd"
    # Served before the small-data model existed: a stored version of this kind still
    # scores as it did until the next refit replaces it.
    heuristic = "heuristic"


@dataclass(frozen=True)
class Heuristic:
    """The population's typical gap between purchases (in the unit): served with every
    model, and what a stored heuristic version scores one-time buyers with."""

    typical_gap: float


@dataclass(frozen=True)
class Model:
    kind: ModelKind
    time_unit: TimeUnit
    purchase: bgnbd.BgNbdParams | paretonbd.ParetoNbdParams | None = None
    spend: gammagamma.GammaGammaParams | None = None
    heuristic: Heuristic = field(default_factory=lambda: Heuristic(typical_gap=90.0))
    version: int | None = None


@dataclass(frozen=True)
class Policy:
    horizon_months: int = 12
    monthly_discount_rate: float = 0.01


@dataclass(frozen=True)
class Scores:
    p_alive: Floats
    expected_purchases: Floats  # over the horizon
    expected_spend: Floats  # per purchase
    clv: Floats  # discounted, over the horizon

    @property
    def churn_probability(self) -> Floats:
        return np.asarray(1.0 - self.p_alive, dtype=np.float64)


def score(
    model: Model,
    policy: Policy,
    *,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    mean_repeat_spend: ArrayLike,
    mean_spend: ArrayLike,
) -> Scores:
    xa, ta, Ta, zr, zm = (
        np.asarray(v, dtype=np.float64) for v in (x, t_x, T, mean_repeat_spend, mean_spend)
    )
    # Cumulative expected purchases at the end of each month of the horizon.
    months = np.arange(1, policy.horizon_months + 1, dtype=np.float64)
    ends = months * model.time_unit.per_month
    alive, cumulative = purchases(model, ends, xa, ta, Ta)
    if model.spend is not None and model.kind is not ModelKind.heuristic:
        spend = gammagamma.conditional_expected_spend(model.spend, xa, zr)
    else:
        # Without a spend model, a customer is expected to keep spending what they spent.
        spend = zm
    cumulative = np.maximum(cumulative, 0.0)
    per_month = np.diff(cumulative, axis=0, prepend=0.0)
    discount = (1.0 + policy.monthly_discount_rate) ** -months
    clv = spend * (discount @ per_month)
    return Scores(
        p_alive=np.clip(alive, 0.0, 1.0),
        expected_purchases=cumulative[-1] if cumulative.size else np.zeros_like(xa),
        expected_spend=spend,
        clv=np.maximum(clv, 0.0),
    )


def purchases(
    model: Model, ends: ArrayLike, x: Floats, t_x: Floats, T: Floats
) -> tuple[Floats, Floats]:
    """P(alive) and cumulative expected purchases at each end, per customer.

    Summaries are whole days, so many customers share (x, t_x, T): the model (twelve
    hypergeometric evaluations per row for a CLV) runs once per distinct row.
    """
    e = np.atleast_1d(np.asarray(ends, dtype=np.float64))
    distinct = _distinct_rows(model.time_unit, x, t_x, T)
    if distinct is not None:
        inverse, rows = distinct
        alive, cumulative = _purchases_of_rows(model, e, rows[0], rows[1], rows[2])
        return alive[inverse], cumulative[:, inverse]
    return _purchases_of_rows(model, e, x, t_x, T)


def _distinct_rows(
    unit: TimeUnit, x: Floats, t_x: Floats, T: Floats
) -> tuple[NDArray[np.intp], tuple[Floats, Floats, Floats]] | None:
    """Distinct rows via one int64 key, when t_x and T are whole days; else None."""
    if x.size < 64:
        return None
    tx_days, T_days = t_x * unit.days, T * unit.days
    whole = np.rint(tx_days), np.rint(T_days)
    if not (np.allclose(whole[0], tx_days) and np.allclose(whole[1], T_days)):
        return None
    if x.max() >= 2**20 or whole[1].max() >= 2**21 or whole[1].min() < 0:
        return None
    key = (x.astype(np.int64) << 42) | (whole[0].astype(np.int64) << 21) | whole[1].astype(np.int64)
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if keys.size > 0.8 * x.size:
        return None  # hardly any sharing: not worth the gather
    return inverse, (x[first], t_x[first], T[first])


def _purchases_of_rows(
    model: Model, ends: Floats, x: Floats, t_x: Floats, T: Floats
) -> tuple[Floats, Floats]:
    p = model.purchase
    if model.kind is ModelKind.heuristic or p is None:
        alive, rate = _heuristic(model.heuristic, x, t_x, T)
        return alive, alive[None, :] * rate[None, :] * ends[:, None]
    if isinstance(p, bgnbd.BgNbdParams):
        return bgnbd.p_alive(p, x, t_x, T), np.stack(
            [bgnbd.conditional_expected_purchases(p, e, x, t_x, T) for e in ends]
        )
    return paretonbd.p_alive(p, x, t_x, T), np.stack(
        [paretonbd.conditional_expected_purchases(p, e, x, t_x, T) for e in ends]
    )


def _heuristic(h: Heuristic, x: Floats, t_x: Floats, T: Floats) -> tuple[Floats, Floats]:
    """P(alive) and purchase rate under a stored heuristic version (what was served with
    too little data before the small-data model).

    A customer's usual gap is their mean time between purchases (the population's typical
    gap before their second purchase). Within that gap they count as alive; past it,
    P(alive) decays by e for every further gap of silence. While alive they buy once per gap.
    """
    gap = np.where(x > 0, t_x / np.maximum(x, 1.0), h.typical_gap)
    gap = np.maximum(gap, 1e-9)
    silence = T - t_x
    alive = np.exp(-np.maximum(silence - gap, 0.0) / gap)
    return np.asarray(alive, dtype=np.float64), np.asarray(1.0 / gap, dtype=np.float64)


def top_decile(clv: ArrayLike) -> float | None:
    """The CLV at the base's 90th percentile (to the cent), the threshold of its top CLV
    decile; None when nobody has a score."""
    values = np.asarray(clv, dtype=np.float64)
    if values.size == 0:
        return None
    return round(float(np.percentile(values, 90)), 2)


@dataclass(frozen=True)
class PublishRule:
    """A score is republished when it moved this much since it was last published."""

    min_churn_change: float = 0.05  # absolute, in probability
    min_clv_change: float = 0.10  # relative to the last published CLV
    min_clv_change_abs: float = 1.0  # and at least this much money (ignores cents)


@dataclass(frozen=True)
class Published:
    churn_probability: float
    clv: float
    model: str


def material(
    rule: PublishRule, before: Published | None, churn_probability: float, clv: float, model: str
) -> bool:
    """Whether a new score should go to clm.scores: always the first one, and then only
    when the churn probability or CLV moved materially or the model kind changed."""
    if before is None or before.model != model:
        return True
    if abs(churn_probability - before.churn_probability) >= rule.min_churn_change:
        return True
    moved = abs(clv - before.clv)
    return moved >= rule.min_clv_change_abs and moved >= rule.min_clv_change * abs(before.clv)
