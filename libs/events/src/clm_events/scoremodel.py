"""The served score model: what scoring fits and announces (`lifecycle.score_model_served`
on the models topic), and the closed forms that turn one customer's purchase summary into
P(alive), churn probability, expected purchases and CLV under it. The announcement also
carries the RFM cut points (`rfm`, clm_events.rfm) scoring scores under.

Scoring scores a whole base at once with its vectorised forms (`clm_scoring.domain`); the
stage engine scores one customer at each moment of their history with these, so a score
a rule reads is always as of the moment evaluated, and the history stays a function of
the events (and the served model). They are the same formulas, held to agree by tests:
BG/NBD (Fader, Hardie & Lee 2005, equations 10 and 13), Pareto/NBD (Fader & Hardie 2005,
"A Note on Deriving the Pareto/NBD Model", equation 22), Gamma-Gamma (Fader & Hardie
2013, equation 5), and scoring's heuristic.

The summary is scoring's: purchases (`purchase.completed`) grouped by calendar day (UTC),
net of refunds; x repeat purchase days, t_x and T (first purchase day to the last one
and to the day scored) in the model's time unit, mean spend per day with a purchase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from scipy.special import hyp2f1

from clm_events.rfm import Cuts

DAYS_PER_MONTH = 365.25 / 12
UNIT_DAYS = {"day": 1.0, "week": 7.0}
PURCHASE_MODELS = ("bgnbd", "pareto_nbd", "heuristic")


@dataclass(frozen=True, slots=True)
class Summary:
    """A customer's purchase summary as of a day (see the module docstring), in days."""

    x: int
    t_x_days: int
    T_days: int
    mean_repeat_spend: float
    mean_spend: float


@dataclass(frozen=True, slots=True)
class Score:
    p_alive: float
    expected_purchases: float  # over the horizon
    expected_spend: float  # per purchase
    clv: float  # discounted, over the horizon

    @property
    def churn_probability(self) -> float:
        return 1.0 - self.p_alive


@dataclass(frozen=True)
class ServedModel:
    """The parameters scoring serves, as the event carries them."""

    version: int
    model: str  # bgnbd, pareto_nbd or heuristic
    time_unit: str  # day or week
    purchase_params: dict[str, float] | None
    spend_params: dict[str, float] | None
    typical_gap: float  # the heuristic's gap for one-time buyers, in the unit
    horizon_months: int
    monthly_discount_rate: float
    # The CLV at the base's 90th percentile when the model was fitted: "top CLV decile"
    # as a number of the served model, so a rule reading it stays a function of the
    # customer's own events (None: nobody scored yet).
    clv_top_decile: float | None
    estimator: str | None = None
    fitted_at: datetime | None = None
    # The RFM cut points scoring scores under (clm_events.rfm), announced with the model
    # so a rule reading RFM is a function of the customer's events and this event. None:
    # no cut points yet, or an announcement of a release before RFM.
    rfm: Cuts | None = None

    @property
    def order(self) -> tuple[int, int]:
        """Announcements come in this order: a new model version, or new cut points."""
        return self.version, (self.rfm.version or 0) if self.rfm else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "estimator": self.estimator,
            "time_unit": self.time_unit,
            "purchase_params": self.purchase_params,
            "spend_params": self.spend_params,
            "typical_gap": self.typical_gap,
            "horizon_months": self.horizon_months,
            "monthly_discount_rate": self.monthly_discount_rate,
            "clv_top_decile": self.clv_top_decile,
            "fitted_at": self.fitted_at.isoformat() if self.fitted_at else None,
            "rfm": self.rfm.to_json() if self.rfm else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ServedModel:
        fitted = raw.get("fitted_at")
        return cls(
            version=int(raw["version"]),
            model=str(raw["model"]),
            time_unit=str(raw["time_unit"]),
            purchase_params=_floats(raw.get("purchase_params")),
            spend_params=_floats(raw.get("spend_params")),
            typical_gap=float(raw["typical_gap"]),
            horizon_months=int(raw["horizon_months"]),
            monthly_discount_rate=float(raw["monthly_discount_rate"]),
            clv_top_decile=_float(raw.get("clv_top_decile")),
            estimator=raw.get("estimator"),
            fitted_at=(
                fitted
                if isinstance(fitted, datetime) or fitted is None
                else datetime.fromisoformat(str(fitted).replace("Z", "+00:00"))
            ),
            rfm=Cuts.from_json(raw["rfm"]) if raw.get("rfm") else None,
        )

    def same_parameters(self, other: ServedModel | None) -> bool:
        """Whether `other` scores every customer exactly as this one does, RFM included."""
        if other is None:
            return False
        mine, theirs = self.to_json(), other.to_json()
        for volatile in ("version", "fitted_at", "estimator", "rfm"):
            mine.pop(volatile), theirs.pop(volatile)
        if self.rfm is None or other.rfm is None:
            return mine == theirs and self.rfm is None and other.rfm is None
        return mine == theirs and self.rfm.same_points(other.rfm)

    def p_alive(self, s: Summary) -> float:
        """P(alive) alone: what a rule reading only the churn probability needs."""
        if self.model == "bgnbd" and self.purchase_params is not None:
            unit = UNIT_DAYS[self.time_unit]
            return min(
                max(
                    _bgnbd_alive(self.purchase_params, s.x, s.t_x_days / unit, s.T_days / unit), 0.0
                ),
                1.0,
            )
        return self.score(s).p_alive

    def score(self, s: Summary) -> Score:
        unit = UNIT_DAYS[self.time_unit]
        x, t_x, T = float(s.x), s.t_x_days / unit, s.T_days / unit
        ends = [m * DAYS_PER_MONTH / unit for m in range(1, self.horizon_months + 1)]
        if self.model == "heuristic" or self.purchase_params is None:
            alive, rate = _heuristic(self.typical_gap, x, t_x, T)
            cumulative = [alive * rate * e for e in ends]
        elif self.model == "pareto_nbd":
            alive, cumulative = _pareto_nbd(self.purchase_params, ends, x, t_x, T)
        else:
            alive, cumulative = _bgnbd(self.purchase_params, ends, x, t_x, T)
        g = self.spend_params
        if g is not None and self.model != "heuristic":
            p, q, gamma = g["p"], g["q"], g["gamma"]
            spend = (p * (gamma + x * s.mean_repeat_spend)) / (p * x + q - 1)
        else:
            spend = s.mean_spend
        rate = self.monthly_discount_rate
        value, before = 0.0, 0.0
        for month, c in enumerate(cumulative, start=1):
            c = max(c, 0.0)
            value += (1.0 + rate) ** -month * (c - before)
            before = c
        return Score(
            p_alive=min(max(alive, 0.0), 1.0),
            expected_purchases=max(cumulative[-1], 0.0) if cumulative else 0.0,
            expected_spend=spend,
            clv=max(spend * value, 0.0),
        )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _floats(raw: dict[str, Any] | None) -> dict[str, float] | None:
    return None if raw is None else {k: float(v) for k, v in raw.items()}


def _expit(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _bgnbd_alive(p: dict[str, float], x: float, t_x: float, T: float) -> float:
    if x <= 0:
        return 1.0  # BG/NBD: nobody drops out before a repeat purchase
    r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    lo = math.log(a) - math.log(b + x - 1) + (r + x) * (math.log(alpha + T) - math.log(alpha + t_x))
    return _expit(-lo)


def _bgnbd(
    p: dict[str, float], ends: list[float], x: float, t_x: float, T: float
) -> tuple[float, list[float]]:
    r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    alive = _bgnbd_alive(p, x, t_x, T)
    if abs(a - 1.0) < 1e-6:
        # The expectation is continuous in `a`, but at a == 1 the formula is 0/0 (the
        # hypergeometric term cancels the power): evaluate it just beside the point.
        a = 1.0 + 1e-6
    head = (a + b + x - 1) / (a - 1) * alive
    log_at = math.log(alpha + T)
    # One call for every month end: scipy's per-call cost is most of a scalar call.
    f = hyp2f1(r + x, b + x, a + b + x - 1, np.array([t / (alpha + T + t) for t in ends]))
    return alive, [
        head * (1.0 - math.exp((r + x) * (log_at - math.log(alpha + T + t))) * v)
        for t, v in zip(ends, f.tolist(), strict=True)
    ]


def _pareto_nbd(
    p: dict[str, float], ends: list[float], x: float, t_x: float, T: float
) -> tuple[float, list[float]]:
    r, alpha, s, beta = p["r"], p["alpha"], p["s"], p["beta"]
    rsx = r + s + x
    if alpha >= beta:
        big, second, diff = alpha, s + 1, alpha - beta
    else:
        big, second, diff = beta, r + x, beta - alpha
    l1 = math.log(float(hyp2f1(rsx, second, rsx + 1, diff / (big + t_x)))) - rsx * math.log(
        big + t_x
    )
    l2 = math.log(float(hyp2f1(rsx, second, rsx + 1, diff / (big + T)))) - rsx * math.log(big + T)
    gap = min(l2 - l1, 0.0)
    log_a0 = l1 + math.log1p(-math.exp(gap)) if gap < 0 else -math.inf  # t_x == T: A0 is 0
    lo = math.log(s / rsx) + (r + x) * math.log(alpha + T) + s * math.log(beta + T) + log_a0
    alive = _expit(-lo) if lo != -math.inf else 1.0
    rate = (r + x) * (beta + T) / ((alpha + T) * (s - 1))
    return alive, [rate * (1.0 - ((beta + T) / (beta + T + t)) ** (s - 1)) * alive for t in ends]


def _heuristic(gap: float, x: float, t_x: float, T: float) -> tuple[float, float]:
    own = t_x / max(x, 1.0) if x > 0 else gap
    own = max(own, 1e-9)
    alive = math.exp(-max((T - t_x) - own, 0.0) / own)
    return alive, 1.0 / own
