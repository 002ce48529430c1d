"""BG/NBD (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way").

While alive a customer buys at a Poisson rate lambda ~ Gamma(r, alpha); after each
repeat purchase they drop out with probability p ~ Beta(a, b). The log-likelihood of
(x, t_x, T), the paper's equation (6), is written as

    A1 + A2 + log(exp(A3) + [x > 0] exp(A4))
    A1 = lnG(r + x) - lnG(r) + r ln(alpha)
    A2 = lnB(a, b + x) - lnB(a, b)
    A3 = -(r + x) ln(alpha + T)
    A4 = ln(a) - ln(b + x - 1) - (r + x) ln(alpha + t_x)

with logaddexp, so no power of (alpha + T) overflows, and an analytic gradient, so the
maximum-likelihood fit needs a few dozen vectorised passes over the customers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

from clm_scoring.domain.arrays import Floats, Frequencies, LogPrior, by_distinct_x, converged


@dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class Fit:
    params: BgNbdParams
    log_likelihood: float
    converged: bool
    iterations: int
    seconds: float


def _terms(
    theta: Floats, f: Frequencies, xs: Floats, index: np.ndarray, wx: Floats
) -> tuple[float, Floats]:
    """Log-likelihood (weighted sum) and its gradient with respect to log-parameters."""
    r, alpha, a, b = np.exp(theta)
    x, t_x, T, w = f.x, f.t_x, f.T, f.weight
    # Terms of x alone, once per distinct x.
    a1 = gammaln(r + xs) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + xs) - betaln(a, b)
    ll = float(wx @ (a1 + a2))
    g_r = float(wx @ (digamma(r + xs) - digamma(r) + np.log(alpha)))
    g_alpha = float(wx.sum() * r / alpha)
    g_a = float(wx @ (digamma(a + b) - digamma(a + b + xs)))
    g_b = float(wx @ (digamma(b + xs) - digamma(b) + digamma(a + b) - digamma(a + b + xs)))

    rx = r + x
    log_at = np.log(alpha + T)
    a3 = -rx * log_at
    buyer = x > 0
    log_b1 = np.log(np.where(xs > 0, b + xs - 1, 1.0))[index]
    log_atx = np.log(alpha + t_x)
    a4 = np.where(buyer, np.log(a) - log_b1 - rx * log_atx, -np.inf)
    lse = np.logaddexp(a3, a4)
    ll += float(w @ lse)
    w4 = np.exp(a4 - lse)  # share of the "dropped out after t_x" branch
    w3 = 1.0 - w4
    g_r += float(w @ (-w3 * log_at - w4 * log_atx))
    g_alpha += float(w @ (-rx * (w3 / (alpha + T) + w4 / (alpha + t_x))))
    g_a += float(w @ w4) / a
    g_b += float(w @ (-w4 * np.exp(-log_b1)))
    # Chain rule to log-parameters: d/d(log th) = th * d/d(th).
    grad = np.array([g_r * r, g_alpha * alpha, g_a * a, g_b * b])
    return ll, grad


def log_likelihood(params: BgNbdParams, f: Frequencies) -> float:
    xs, index, wx = by_distinct_x(f.x, f.weight)
    theta = np.log([params.r, params.alpha, params.a, params.b])
    return _terms(theta, f, xs, index, wx)[0]


def fit(
    f: Frequencies, *, start: BgNbdParams | None = None, log_prior: LogPrior | None = None
) -> Fit:
    """Maximum-likelihood estimates (L-BFGS-B on log-parameters, so all stay positive), or
    maximum a posteriori ones with `log_prior` (a density over the log-parameters)."""
    started = time.perf_counter()
    xs, index, wx = by_distinct_x(f.x, f.weight)
    n = f.customers
    # Scale by the customer count so tolerances mean the same for 2k or 1M customers.
    scale = 1.0 / n

    def objective(theta: Floats) -> tuple[float, Floats]:
        clipped = np.clip(theta, -20, 20)
        ll, grad = _terms(clipped, f, xs, index, wx)
        if log_prior is not None:
            lp, lp_grad = log_prior(clipped)
            ll, grad = ll + lp, grad + lp_grad
        return -ll * scale, -grad * scale

    x0 = np.log(
        [start.r, start.alpha, start.a, start.b] if start else [1.0, max(1.0, f.T.mean()), 1.0, 1.0]
    )
    result = minimize(
        objective,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-20, 20)] * 4,
        options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-9},
    )
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    params = BgNbdParams(r, alpha, a, b)
    ll = -float(result.fun) * n
    if log_prior is not None:  # report the data's log-likelihood, not the posterior's
        ll -= log_prior(np.clip(result.x, -20, 20))[0]
    return Fit(
        params=params,
        log_likelihood=ll,
        converged=converged(result),
        iterations=int(result.nit),
        seconds=time.perf_counter() - started,
    )


def _log_odds_dropped(params: BgNbdParams, x: Floats, t_x: Floats, T: Floats) -> Floats:
    """log of P(dropped out at t_x) / P(alive) given the history; -inf for x = 0."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    buyer = x > 0
    safe = np.where(buyer, b + x - 1, 1.0)
    lo = np.log(a) - np.log(safe) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return np.where(buyer, lo, -np.inf)


def p_alive(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Floats:
    """P(alive at T | x, t_x, T): the paper's equation (13)."""
    xa, ta, Ta = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    return np.asarray(expit(-_log_odds_dropped(params, xa, ta, Ta)), dtype=np.float64)


def _beside_one(a: float) -> float:
    """`a` itself, or just beside 1: the expectations are continuous in `a`, but their
    closed forms are 0/0 at a == 1 (the hypergeometric term cancels the power)."""
    return 1.0 + 1e-6 if abs(a - 1.0) < 1e-6 else a


def conditional_expected_purchases(
    params: BgNbdParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> Floats:
    """E[purchases in (T, T + t] | x, t_x, T]: the paper's equation (10)."""
    r, alpha, a, b = params.r, params.alpha, _beside_one(params.a), params.b
    ta, xa, txa, Ta = (np.asarray(v, dtype=np.float64) for v in (t, x, t_x, T))
    z = ta / (alpha + Ta + ta)
    log_ratio = (r + xa) * (np.log(alpha + Ta) - np.log(alpha + Ta + ta))
    bracket = 1.0 - np.exp(log_ratio) * hyp2f1(r + xa, b + xa, a + b + xa - 1, z)
    alive = expit(-_log_odds_dropped(params, xa, txa, Ta))
    return np.asarray((a + b + xa - 1) / (a - 1) * bracket * alive, dtype=np.float64)


def expected_purchases(params: BgNbdParams, t: ArrayLike) -> Floats:
    """E[X(t)]: repeat purchases of a new customer in (0, t], the paper's equation (7)."""
    r, alpha, a, b = params.r, params.alpha, _beside_one(params.a), params.b
    ta = np.asarray(t, dtype=np.float64)
    bracket = 1.0 - (alpha / (alpha + ta)) ** r * hyp2f1(r, b, a + b - 1, ta / (alpha + ta))
    return np.asarray((a + b - 1) / (a - 1) * bracket, dtype=np.float64)


def simulate(
    params: BgNbdParams, T: ArrayLike, rng: np.random.Generator
) -> tuple[Floats, Floats, Floats]:
    """Draw (x, t_x, T) from the generative process, for customers of ages T.

    Given N purchases in (0, T] at rate lambda, and a dropout after the D-th repeat
    purchase (D ~ Geometric(p)), the customer shows x = min(N, D) and the x-th of N
    uniform arrival times: t_x = T * Beta(x, N - x + 1).
    """
    Ta = np.asarray(T, dtype=np.float64)
    lam = rng.gamma(params.r, 1.0 / params.alpha, size=Ta.shape)
    p = rng.beta(params.a, params.b, size=Ta.shape)
    n = rng.poisson(lam * Ta)
    d = rng.geometric(p)
    x = np.minimum(n, d)
    t_x = np.zeros_like(Ta)
    buyer = x > 0
    t_x[buyer] = Ta[buyer] * rng.beta(x[buyer], n[buyer] - x[buyer] + 1)
    return x.astype(np.float64), t_x, Ta
