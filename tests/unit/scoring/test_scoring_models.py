"""Model behaviour without I/O: fits recover known parameters, scores move the way a
marketer expects (the small-data model: test_scoring_small_data.py)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import numpy as np
import pytest
from scipy.optimize import check_grad

from clm_scoring.domain import bgnbd, gammagamma
from clm_scoring.domain.arrays import Frequencies, Spends, by_distinct_x
from clm_scoring.domain.fitting import Estimator, choose
from clm_scoring.domain.scores import (
    Model,
    ModelKind,
    Policy,
    Published,
    PublishRule,
    material,
    score,
)
from clm_scoring.domain.summary import Order, TimeUnit, history, summarize

TRUE = bgnbd.BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def synthetic(n: int, seed: int = 11) -> Frequencies:
    rng = np.random.default_rng(seed)
    x, t_x, T = bgnbd.simulate(TRUE, rng.uniform(10, 78, size=n), rng)
    return Frequencies.of(x, t_x, T)


def test_bgnbd_recovers_the_parameters_it_was_drawn_from() -> None:
    fit = bgnbd.fit(synthetic(200_000))
    got = fit.params.as_dict()
    for name, want in TRUE.as_dict().items():
        assert got[name] == pytest.approx(want, rel=0.06), name


def test_compressed_rows_fit_exactly_like_one_row_per_customer() -> None:
    f = synthetic(5_000)
    # Whole weeks: many customers share a row.
    t_x = np.where(f.x > 0, np.maximum(np.round(f.t_x), 1.0), 0.0)
    rows = np.stack([f.x, t_x, np.maximum(np.round(f.T), t_x)], axis=1)
    distinct, counts = np.unique(rows, axis=0, return_counts=True)
    full = bgnbd.fit(Frequencies.of(rows[:, 0], rows[:, 1], rows[:, 2]))
    compressed = bgnbd.fit(Frequencies.of(*distinct.T, weight=counts))
    assert compressed.log_likelihood == pytest.approx(full.log_likelihood, rel=1e-9)
    assert compressed.params.r == pytest.approx(full.params.r, rel=1e-5)


def test_analytic_gradients_match_the_likelihoods() -> None:
    f = synthetic(2_000)
    xs, index, wx = by_distinct_x(f.x, f.weight)
    theta = np.log([0.4, 6.0, 0.9, 3.0])
    error = check_grad(
        lambda t: bgnbd._terms(t, f, xs, index, wx)[0],
        lambda t: bgnbd._terms(t, f, xs, index, wx)[1],
        theta,
    )
    assert error < 1e-3 * np.abs(bgnbd._terms(theta, f, xs, index, wx)[1]).max()
    s = Spends.of([1, 2, 5], [10.0, 30.0, 22.0])
    g = check_grad(
        lambda t: gammagamma._terms(t, s)[0],
        lambda t: gammagamma._terms(t, s)[1],
        np.log([5.0, 3.0, 10.0]),
    )
    assert g < 1e-4


def test_silence_lowers_p_alive_and_a_new_purchase_restores_it() -> None:
    silent = bgnbd.p_alive(TRUE, [3, 3, 3], [20, 20, 20], [22, 40, 80])
    assert silent[0] > silent[1] > silent[2]
    assert bgnbd.p_alive(TRUE, 4, 80, 80) > silent[2]
    assert bgnbd.p_alive(TRUE, 0, 0, 50) == 1.0  # BG/NBD: no repeat purchase, no dropout yet


def test_clv_is_discounted_spend_times_expected_purchases() -> None:
    model = Model(
        ModelKind.bgnbd,
        TimeUnit.week,
        purchase=TRUE,
        spend=gammagamma.GammaGammaParams(6.25, 3.74, 15.44),
    )
    kwargs = {"x": [2], "t_x": [30.0], "T": [39.0], "mean_repeat_spend": [20.0], "mean_spend": [1]}
    plain = score(model, Policy(12, 0.0), **kwargs)  # type: ignore[arg-type]
    discounted = score(model, Policy(12, 0.01), **kwargs)  # type: ignore[arg-type]
    assert plain.clv[0] == pytest.approx(plain.expected_purchases[0] * plain.expected_spend[0])
    assert discounted.clv[0] < plain.clv[0]
    assert plain.churn_probability[0] == pytest.approx(1 - plain.p_alive[0])


def test_enough_repeat_buyers_get_a_fitted_model() -> None:
    f = synthetic(20_000)
    report = choose(
        f,
        None,
        kind=ModelKind.bgnbd,
        unit=TimeUnit.week,
        min_repeat_customers=500,
        typical_gap_days=90,
    )
    assert report.model.kind is ModelKind.bgnbd and report.estimator is Estimator.mle
    assert report.log_likelihood is not None and report.log_likelihood < 0


def test_same_day_purchases_count_once_and_refunds_adjust_spend() -> None:
    d = date(2026, 1, 1)
    h = history(
        [
            Order(d, Decimal("10")),
            Order(d, Decimal("5")),
            Order(d + timedelta(days=14), Decimal("40"), refunded=Decimal("10")),
            Order(d + timedelta(days=21), Decimal("99"), refunded=Decimal("99")),
        ]
    )
    assert h is not None
    s = summarize(h, d + timedelta(days=28), TimeUnit.week)
    assert (s.x, s.t_x, s.T, s.mean_repeat_spend) == (1, 2.0, 4.0, 30.0)
    assert s.mean_spend == 22.5
    assert history([Order(d, Decimal("5"), refunded=Decimal("5"))]) is None


def test_only_material_moves_are_published() -> None:
    rule = PublishRule(min_churn_change=0.05, min_clv_change=0.10, min_clv_change_abs=1.0)
    before = Published(churn_probability=0.30, clv=100.0, model="bgnbd")
    assert material(rule, None, 0.3, 100.0, "bgnbd")
    assert not material(rule, before, 0.33, 105.0, "bgnbd")
    assert material(rule, before, 0.36, 100.0, "bgnbd")
    assert material(rule, before, 0.30, 111.0, "bgnbd")
    assert not material(rule, Published(0.3, 2.0, "bgnbd"), 0.3, 2.5, "bgnbd")  # cents
    assert material(rule, before, 0.30, 100.0, "heuristic")


def test_bad_summaries_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="t_x must lie in"):
        Frequencies.of([1], [5.0], [3.0])
    with pytest.raises(ValueError, match="whole numbers"):
        Frequencies.of([1.5], [1.0], [3.0])
    with pytest.raises(ValueError, match="no customers"):
        Frequencies.of([], [], [])
