"""Pareto/NBD (Schmittlein, Morrison & Colombo 1987), the optional purchase model.

Likelihood, P(alive) and conditional expectation as in Fader & Hardie (2005), "A Note on
Deriving the Pareto/NBD Model and Related Expressions", in log form so that the powers of
(alpha + T) cannot overflow. The difference of the two hypergeometric terms (A0) is taken
as log(l1) + log1p(-exp(l2 - l1)) to keep its precision when t_x is close to T.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1

from clm_scoring.domain.arrays import Floats, Frequencies


@dataclass(frozen=True)
class ParetoNbdParams:
    r: float
    alpha: float
    s: float
    beta: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "s": self.s, "beta": self.beta}


@dataclass(frozen=True)
class Fit:
    params: ParetoNbdParams
    log_likelihood: float
    converged: bool
    iterations: int
    seconds: float


def _log_a0(params: ParetoNbdParams, x: Floats, t_x: Floats, T: Floats) -> Floats:
    r, alpha, s, beta = params.r, params.alpha, params.s, params.beta
    rsx = r + s + x
    second: Floats | float
    if alpha >= beta:
        big, second, diff = alpha, s + 1, alpha - beta
    else:
        big, second, diff = beta, r + x, beta - alpha
    l1 = np.log(hyp2f1(rsx, second, rsx + 1, diff / (big + t_x))) - rsx * np.log(big + t_x)
    l2 = np.log(hyp2f1(rsx, second, rsx + 1, diff / (big + T))) - rsx * np.log(big + T)
    with np.errstate(divide="ignore"):  # t_x == T: A0 is exactly 0
        return np.asarray(l1 + np.log1p(-np.exp(np.minimum(l2 - l1, 0.0))), dtype=np.float64)


def _log_likelihood_rows(params: ParetoNbdParams, f: Frequencies) -> Floats:
    r, alpha, s, beta = params.r, params.alpha, params.s, params.beta
    x, t_x, T = f.x, f.t_x, f.T
    head = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    dropped = np.log(s / (r + s + x)) + _log_a0(params, x, t_x, T)
    return np.asarray(head + np.logaddexp(alive, dropped), dtype=np.float64)


def log_likelihood(params: ParetoNbdParams, f: Frequencies) -> float:
    return float(f.weight @ _log_likelihood_rows(params, f))


def fit(f: Frequencies) -> Fit:
    """Maximum likelihood with numerical gradients (Nelder-Mead then L-BFGS-B polish):
    the hypergeometric terms make an analytic gradient long for an optional model."""
    started = time.perf_counter()
    n = f.customers

    def objective(theta: Floats) -> float:
        r, alpha, s, beta = np.exp(np.clip(theta, -20, 20))
        # Far from the optimum the hypergeometric terms overflow: that point is just bad.
        with np.errstate(all="ignore"):
            value = -log_likelihood(ParetoNbdParams(r, alpha, s, beta), f) / n
        return value if np.isfinite(value) else 1e300

    x0 = np.log([1.0, max(1.0, float(f.T.mean())), 1.0, max(1.0, float(f.T.mean()))])
    coarse = minimize(objective, x0, method="Nelder-Mead", options={"maxiter": 2000})
    result = minimize(
        objective,
        coarse.x,
        method="L-BFGS-B",
        bounds=[(-20, 20)] * 4,
        options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-9},
    )
    best = result if result.fun <= coarse.fun else coarse
    r, alpha, s, beta = (float(v) for v in np.exp(best.x))
    return Fit(
        params=ParetoNbdParams(r, alpha, s, beta),
        log_likelihood=-float(best.fun) * n,
        converged=bool(np.isfinite(best.fun) and (result.success or coarse.success)),
        iterations=int(coarse.nit) + int(result.nit),
        seconds=time.perf_counter() - started,
    )


def _log_odds_dropped(params: ParetoNbdParams, x: Floats, t_x: Floats, T: Floats) -> Floats:
    r, alpha, s, beta = params.r, params.alpha, params.s, params.beta
    return np.asarray(
        np.log(s / (r + s + x))
        + (r + x) * np.log(alpha + T)
        + s * np.log(beta + T)
        + _log_a0(params, x, t_x, T),
        dtype=np.float64,
    )


def p_alive(params: ParetoNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    xa, ta, Ta = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    return np.asarray(expit(-_log_odds_dropped(params, xa, ta, Ta)), dtype=np.float64)


def conditional_expected_purchases(
    params: ParetoNbdParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> Floats:
    """E[purchases in (T, T + t] | x, t_x, T] (equation 22 of the note; s != 1)."""
    r, alpha, s, beta = params.r, params.alpha, params.s, params.beta
    ta, xa, txa, Ta = (np.asarray(v, dtype=np.float64) for v in (t, x, t_x, T))
    rate = (r + xa) * (beta + Ta) / ((alpha + Ta) * (s - 1))
    bracket = 1.0 - ((beta + Ta) / (beta + Ta + ta)) ** (s - 1)
    return np.asarray(rate * bracket * p_alive(params, xa, txa, Ta), dtype=np.float64)
