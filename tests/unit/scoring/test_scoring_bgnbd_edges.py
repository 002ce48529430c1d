"""BG/NBD's expectations where the closed forms divide by (a - 1)."""

from __future__ import annotations

import numpy as np
import pytest

from clm_scoring.domain.bgnbd import (
    BgNbdParams,
    conditional_expected_purchases,
    expected_purchases,
)


@pytest.mark.parametrize("x", [0.0, 3.0])
def test_a_fit_with_a_of_exactly_one_scores_between_its_neighbours(x: float) -> None:
    def both(a: float) -> tuple[float, float]:
        p = BgNbdParams(r=0.8, alpha=6.0, a=a, b=3.0)
        cond = conditional_expected_purchases(p, 52.0, x, 10.0 if x else 0.0, 30.0)
        return float(cond), float(expected_purchases(p, 52.0))

    below, at, above = both(0.999), both(1.0), both(1.001)
    for lo, value, hi in zip(below, at, above, strict=True):
        assert np.isfinite(value) and min(lo, hi) <= value <= max(lo, hi), (lo, value, hi)
