"""The small-data model: BG/NBD and Gamma-Gamma fitted by maximum a posteriori (MAP) with
weakly informative priors, for as long as too few customers bought twice for maximum
likelihood alone to be trusted.

Each prior is log-normal (normal on the log of the parameter, where the fits run), with a
standard deviation of 1 on that log scale: a factor e either way is one sd. The medians
come from what the dimensionless parameters mean, never from a data set:

- BG/NBD `r` (shape of purchase rates across customers), median 1: rates spread like an
  exponential distribution (coefficient of variation 1/sqrt(r) = 1).
- BG/NBD `alpha` (rate scale, a time), median r x the typical gap: the average rate r/alpha
  is one purchase per typical gap, the one number an operator configures. The prior is on
  alpha/r, so how often customers buy and how much that varies are separate beliefs.
- BG/NBD `a`, `b` (dropout probability after a purchase ~ Beta(a, b)), medians 0.5 and
  1.5: a quarter of customers lapse after a given purchase on average, with the weight of
  two observations (a + b = 2), and a < 1 puts most customers at a low dropout with a long
  tail of quick lapsers. (a = 1 exactly is also a removable singularity of the
  conditional expectation, which the mode should not sit on.)
- Gamma-Gamma `p` (shape of one customer's spends), median 2: a customer's transaction
  values vary with a coefficient of variation of about 0.7.
- Gamma-Gamma `q` (shape across customers), median 3: customers' mean spends vary with a
  coefficient of variation of 1 (1/sqrt(q - 2)), and have a population mean (q > 1).
- Gamma-Gamma `gamma` (the money scale) has no prior: amounts are in any currency, so only
  the data can say what is a lot.

The MAP is taken over the log-parameters, so with no data it is the priors' medians
exactly; as data grow the likelihood outweighs the fixed prior and the MAP tends to the
maximum-likelihood estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clm_scoring.domain import bgnbd, gammagamma
from clm_scoring.domain.arrays import Floats, Frequencies, Spends


@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float = 1.0

    def at(self, log_value: float) -> tuple[float, float]:
        """Log-density of the log-parameter (up to a constant) and its derivative."""
        z = (log_value - math.log(self.median)) / self.sigma
        return -0.5 * z * z, -z / self.sigma

    def describe(self) -> str:
        return f"median {self.median:g}"


@dataclass(frozen=True)
class BgNbdPrior:
    typical_gap: float  # in the model's time unit
    r: LogNormal = LogNormal(1.0)
    gap_sigma: float = 1.0  # of log(alpha / r)
    a: LogNormal = LogNormal(0.5)
    b: LogNormal = LogNormal(1.5)

    @property
    def gap(self) -> LogNormal:
        return LogNormal(self.typical_gap, self.gap_sigma)

    def mode(self) -> bgnbd.BgNbdParams:
        """The MAP with no data, computed exactly: the medians."""
        r = self.r.median
        return bgnbd.BgNbdParams(r, r * self.typical_gap, self.a.median, self.b.median)

    def log_density(self, theta: Floats) -> tuple[float, Floats]:
        log_r, log_alpha, log_a, log_b = (float(v) for v in theta)
        v_r, d_r = self.r.at(log_r)
        v_g, d_g = self.gap.at(log_alpha - log_r)
        v_a, d_a = self.a.at(log_a)
        v_b, d_b = self.b.at(log_b)
        return v_r + v_g + v_a + v_b, np.array([d_r - d_g, d_g, d_a, d_b])


@dataclass(frozen=True)
class GammaGammaPrior:
    p: LogNormal = LogNormal(2.0)
    q: LogNormal = LogNormal(3.0)

    def log_density(self, theta: Floats) -> tuple[float, Floats]:
        v_p, d_p = self.p.at(float(theta[0]))
        v_q, d_q = self.q.at(float(theta[1]))
        return v_p + v_q, np.array([d_p, d_q, 0.0])  # gamma: flat on its log


@dataclass(frozen=True)
class Priors:
    purchase: BgNbdPrior
    spend: GammaGammaPrior = field(default_factory=GammaGammaPrior)

    def describe(self, days_per_unit: float) -> str:
        p, s = self.purchase, self.spend
        return (
            "priors log-normal with sd 1 on the log scale: BG/NBD "
            f"r {p.r.describe()}, alpha/r median the typical gap of "
            f"{p.typical_gap * days_per_unit:g} days, a {p.a.describe()}, b {p.b.describe()}; "
            f"Gamma-Gamma p {s.p.describe()}, q {s.q.describe()}, gamma from the data"
        )


def fit_purchases(f: Frequencies | None, prior: BgNbdPrior) -> bgnbd.Fit:
    """The MAP BG/NBD fit; with no data, the prior's mode (no optimiser: deterministic)."""
    if f is None:
        return bgnbd.Fit(prior.mode(), 0.0, True, 0, 0.0)
    return bgnbd.fit(f, start=prior.mode(), log_prior=prior.log_density)


def fit_spend(s: Spends, prior: GammaGammaPrior) -> gammagamma.Fit:
    return gammagamma.fit(s, log_prior=prior.log_density, start=(prior.p.median, prior.q.median))
