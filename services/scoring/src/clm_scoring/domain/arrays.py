"""Customer summaries as column arrays, optionally compressed to distinct rows with weights.

Every likelihood here is a weighted sum over rows: customers with the same (x, t_x, T)
contribute identically, so a day-grained population fits in the time of its distinct rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import OptimizeResult

Floats = NDArray[np.float64]
# A log-density over log-parameters and its gradient: what a MAP fit adds to a likelihood.
LogPrior = Callable[[Floats], tuple[float, Floats]]


@dataclass(frozen=True)
class Frequencies:
    x: Floats  # repeat purchases
    t_x: Floats  # time of the last purchase since the first
    T: Floats  # age: time since the first purchase
    weight: Floats  # customers with this row

    @classmethod
    def of(
        cls, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weight: ArrayLike | None = None
    ) -> Frequencies:
        xs = np.asarray(x, dtype=np.float64)
        w = np.ones_like(xs) if weight is None else np.asarray(weight, dtype=np.float64)
        f = cls(xs, np.asarray(t_x, dtype=np.float64), np.asarray(T, dtype=np.float64), w)
        f.validate()
        return f

    def validate(self) -> None:
        n = self.x.shape
        if not (self.t_x.shape == self.T.shape == self.weight.shape == n) or len(n) != 1:
            raise ValueError("x, t_x, T and weight must be 1-d arrays of one length")
        if n[0] == 0:
            raise ValueError("no customers to fit")
        if np.any(self.x < 0) or np.any(self.x != np.floor(self.x)):
            raise ValueError("x (repeat purchases) must be whole numbers >= 0")
        if np.any(self.t_x < 0) or np.any(self.t_x > self.T + 1e-9):
            raise ValueError("t_x must lie in [0, T]")
        if np.any((self.x > 0) & (self.t_x <= 0)):
            raise ValueError("a customer with repeat purchases needs t_x > 0")
        if np.any(self.weight <= 0):
            raise ValueError("weights must be positive")

    @property
    def customers(self) -> float:
        return float(self.weight.sum())

    @property
    def repeat_customers(self) -> float:
        return float(self.weight[self.x > 0].sum())


@dataclass(frozen=True)
class Spends:
    """Repeat customers' number of repeat purchases and mean repeat spend."""

    x: Floats
    mean_spend: Floats
    weight: Floats

    @classmethod
    def of(cls, x: ArrayLike, mean_spend: ArrayLike, weight: ArrayLike | None = None) -> Spends:
        xs = np.asarray(x, dtype=np.float64)
        w = np.ones_like(xs) if weight is None else np.asarray(weight, dtype=np.float64)
        s = cls(xs, np.asarray(mean_spend, dtype=np.float64), w)
        if not (s.x.shape == s.mean_spend.shape == s.weight.shape) or s.x.ndim != 1:
            raise ValueError("x, mean_spend and weight must be 1-d arrays of one length")
        if s.x.size == 0:
            raise ValueError("no repeat customers to fit spend on")
        if np.any(s.x < 1) or np.any(s.mean_spend <= 0) or np.any(s.weight <= 0):
            raise ValueError("spend is fitted on repeat customers with positive mean spend")
        return s


def by_distinct_x(x: Floats, weight: Floats) -> tuple[Floats, NDArray[np.intp], Floats]:
    """Distinct x values, each row's index into them, and the weight per distinct x: terms
    that depend on x alone (the gamma functions) are then evaluated once per value."""
    values, index = np.unique(x, return_inverse=True)
    counts = np.bincount(index, weights=weight, minlength=values.size).astype(np.float64)
    return values, index, counts


def converged(result: OptimizeResult) -> bool:
    """Whether a fit reached its optimum. L-BFGS-B with tight tolerances sometimes ends in
    an "abnormal" line search at the optimum itself, where the objective (a mean per
    customer) cannot improve in the last digits: a vanishing gradient counts too."""
    if not np.isfinite(result.fun):
        return False
    return bool(result.success or np.max(np.abs(result.jac)) < 1e-5)
