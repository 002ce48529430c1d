"""The served score model's arithmetic at the edges of its parameters."""

from __future__ import annotations

import math

import pytest

from clm_events.scoremodel import ServedModel, Summary


def _bgnbd(a: float) -> ServedModel:
    return ServedModel(
        version=1,
        model="bgnbd",
        time_unit="week",
        purchase_params={"r": 0.8, "alpha": 6.0, "a": a, "b": 3.0},
        spend_params={"p": 6.0, "q": 4.0, "gamma": 15.0},
        typical_gap=12.0,
        horizon_months=12,
        monthly_discount_rate=0.01,
        clv_top_decile=None,
    )


@pytest.mark.parametrize("x", [0, 3])
def test_a_fitted_a_of_exactly_one_scores_between_its_neighbours(x: int) -> None:
    # BG/NBD's conditional expectation divides by (a - 1); a fit may land on a == 1.
    summary = Summary(x, 100 if x else 0, 200, 30.0 if x else 0.0, 30.0)
    below, at, above = (_bgnbd(a).score(summary) for a in (0.999, 1.0, 1.001))
    for field in ("expected_purchases", "clv"):
        lo, hi = sorted((getattr(below, field), getattr(above, field)))
        value = getattr(at, field)
        assert math.isfinite(value) and lo <= value <= hi, (field, lo, value, hi)
