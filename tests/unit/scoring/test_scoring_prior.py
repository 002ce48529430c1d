"""The small-data priors and MAP fits: exactly the priors' mode without data, exact
gradients, and maximum-likelihood estimates in the limit of much data."""

from __future__ import annotations

import numpy as np
from scipy.optimize import OptimizeResult, check_grad

from clm_scoring.domain import bgnbd, gammagamma, prior
from clm_scoring.domain.arrays import Frequencies, Spends, converged

# A world unlike CDNOW's: customers buy about every six weeks, and few lapse.
WORLD = bgnbd.BgNbdParams(r=0.8, alpha=5.0, a=1.5, b=6.0)
SPEND = gammagamma.GammaGammaParams(p=3.0, q=5.0, gamma=200.0)
GAP_WEEKS = 90 / 7


def world(n: int, seed: int = 3) -> tuple[Frequencies, Spends]:
    """Summaries and mean repeat spends drawn from WORLD and SPEND."""
    rng = np.random.default_rng(seed)
    x, t_x, T = bgnbd.simulate(WORLD, rng.uniform(4, 52, size=n), rng)
    nu = rng.gamma(SPEND.q, 1 / SPEND.gamma, size=n)
    repeat = x > 0
    z = rng.gamma(SPEND.p * x[repeat], 1 / (nu[repeat] * x[repeat]))
    return Frequencies.of(x, t_x, T), Spends.of(x[repeat], z)


def test_without_data_the_fit_is_exactly_the_priors_mode() -> None:
    p = prior.BgNbdPrior(GAP_WEEKS)
    assert prior.fit_purchases(None, p).params == bgnbd.BgNbdParams(1.0, GAP_WEEKS, 0.5, 1.5)
    assert p.log_density(np.log([1.0, GAP_WEEKS, 0.5, 1.5]))[0] == 0.0  # its maximum


def test_the_log_priors_gradients_are_exact() -> None:
    p = prior.BgNbdPrior(GAP_WEEKS)
    theta = np.log([0.4, 6.0, 0.9, 3.0])
    assert check_grad(lambda t: p.log_density(t)[0], lambda t: p.log_density(t)[1], theta) < 1e-6
    g = prior.GammaGammaPrior()
    theta = np.log([5.0, 2.5, 40.0])
    assert check_grad(lambda t: g.log_density(t)[0], lambda t: g.log_density(t)[1], theta) < 1e-6


def test_map_tends_to_the_maximum_likelihood_fit_as_data_grow() -> None:
    def distance(n: int) -> tuple[float, float]:
        f, s = world(n)
        m = prior.fit_purchases(f, prior.BgNbdPrior(GAP_WEEKS))
        e = bgnbd.fit(f)
        gm, ge = prior.fit_spend(s, prior.GammaGammaPrior()), gammagamma.fit(s)
        assert m.converged and gm.converged
        # The reported log-likelihood is the data's, so the MLE's is at least as high.
        assert m.log_likelihood <= e.log_likelihood + 1e-6
        d = np.log(list(m.params.as_dict().values())) - np.log(list(e.params.as_dict().values()))
        dg = np.log(list(gm.params.as_dict().values())) - np.log(list(ge.params.as_dict().values()))
        return float(np.abs(d).max()), float(np.abs(dg).max())

    near = [distance(n) for n in (500, 5_000, 40_000)]
    assert near[0][0] > near[1][0] > near[2][0] and near[2][0] < 0.02
    assert near[0][1] > near[1][1] > near[2][1] and near[2][1] < 0.001


def test_an_abnormal_line_search_at_the_optimum_counts_as_converged() -> None:
    def result(success: bool, fun: float, jac: list[float]) -> OptimizeResult:
        return OptimizeResult(success=success, fun=fun, jac=np.array(jac))

    assert converged(result(True, 5.7, [0.1, 0.0]))
    assert converged(result(False, 5.7, [1e-11, -2e-11]))  # could not improve the last digits
    assert not converged(result(False, 5.7, [1e-11, 0.3]))
    assert not converged(result(True, np.inf, [0.0, 0.0]))
