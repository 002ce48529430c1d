"""Gamma-Gamma spend model (Fader & Hardie 2013, "The Gamma-Gamma Model of Monetary Value").

A customer's transaction values are Gamma(p, nu) with nu ~ Gamma(q, gamma) across
customers; it is fitted on repeat customers' number of repeat purchases x and their mean
repeat spend zbar, and assumes spend is independent of the purchase process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from clm_scoring.domain.arrays import Floats, LogPrior, Spends, converged


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    gamma: float

    def as_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "gamma": self.gamma}

    @property
    def population_mean_spend(self) -> float:
        """E[Z] = p * gamma / (q - 1); infinite (no mean) when q <= 1."""
        return self.p * self.gamma / (self.q - 1) if self.q > 1 else float("inf")


@dataclass(frozen=True)
class Fit:
    params: GammaGammaParams
    log_likelihood: float
    converged: bool
    seconds: float


def _terms(theta: Floats, s: Spends) -> tuple[float, Floats]:
    """Log-likelihood of the mean spends (equation 3 of the note) and its gradient with
    respect to log-parameters."""
    p, q, g = np.exp(theta)
    x, z, w = s.x, s.mean_spend, s.weight
    px = p * x
    log_gxz = np.log(g + x * z)
    ll_i = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(g)
        + (px - 1) * np.log(z)
        + px * np.log(x)
        - (px + q) * log_gxz
    )
    d_common = digamma(px + q)
    g_p = w @ (x * (d_common - digamma(px) + np.log(z) + np.log(x) - log_gxz))
    g_q = w @ (d_common - digamma(q) + np.log(g) - log_gxz)
    g_g = w @ (q / g - (px + q) / (g + x * z))
    return float(w @ ll_i), np.array([g_p * p, g_q * q, g_g * g])


def log_likelihood(params: GammaGammaParams, s: Spends) -> float:
    return _terms(np.log([params.p, params.q, params.gamma]), s)[0]


def fit(
    s: Spends, *, log_prior: LogPrior | None = None, start: tuple[float, float] = (1.0, 2.0)
) -> Fit:
    """Maximum-likelihood estimates, or maximum a posteriori ones with `log_prior` (a
    density over the log-parameters); `start` is (p, q), gamma starts where the
    population mean spend is the data's."""
    started = time.perf_counter()
    n = float(s.weight.sum())

    def objective(theta: Floats) -> tuple[float, Floats]:
        ll, grad = _terms(theta, s)
        if log_prior is not None:
            lp, lp_grad = log_prior(theta)
            ll, grad = ll + lp, grad + lp_grad
        return -ll / n, -grad / n

    mean = float(np.average(s.mean_spend, weights=s.weight))
    p0, q0 = start
    result = minimize(
        objective,
        np.log([p0, q0, mean * (q0 - 1) / p0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-20, 20)] * 3,
        options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-9},
    )
    p, q, g = (float(v) for v in np.exp(result.x))
    ll = -float(result.fun) * n
    if log_prior is not None:  # report the data's log-likelihood, not the posterior's
        ll -= log_prior(result.x)[0]
    return Fit(
        params=GammaGammaParams(p, q, g),
        log_likelihood=ll,
        converged=converged(result),
        seconds=time.perf_counter() - started,
    )


def conditional_expected_spend(
    params: GammaGammaParams, x: ArrayLike, mean_spend: ArrayLike
) -> Floats:
    """E[spend per transaction | x, zbar] (equation 5): a weighted mean of the population
    mean and the customer's own mean, the latter weighing more the more they bought.
    Needs q > 1 (the population mean exists)."""
    p, q, g = params.p, params.q, params.gamma
    xa = np.asarray(x, dtype=np.float64)
    za = np.asarray(mean_spend, dtype=np.float64)
    return np.asarray((p * (g + xa * za)) / (p * xa + q - 1), dtype=np.float64)
