"""The small-data model (MAP with weakly informative priors), the top CLV decile and the
stored row as served: what scoring serves before it has enough repeat buyers for a
maximum-likelihood fit, and what it announces."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from test_scoring_prior import WORLD, world

from clm_events.scoremodel import Summary
from clm_scoring.domain import bgnbd, prior
from clm_scoring.domain.arrays import Frequencies, Spends
from clm_scoring.domain.fitting import Estimator, FitReport, choose
from clm_scoring.domain.scores import Heuristic, Model, ModelKind, Policy, score, top_decile
from clm_scoring.domain.summary import TimeUnit
from clm_scoring.served import model_of, served_model

GAP_WEEKS = 90 / 7


def small_data(
    f: Frequencies | None, spends: Spends | None, kind: ModelKind = ModelKind.bgnbd
) -> FitReport:
    return choose(
        f, spends, kind=kind, unit=TimeUnit.week, min_repeat_customers=500, typical_gap_days=90
    )


def test_with_no_data_the_prior_mode_is_served_exactly() -> None:
    report = small_data(None, None)
    assert report.estimator is Estimator.map
    assert report.model.kind is ModelKind.bgnbd and report.model.spend is None
    # The priors' medians, not an optimiser's approximation of them.
    assert report.model.purchase == bgnbd.BgNbdParams(1.0, GAP_WEEKS, 0.5, 1.5)
    assert report.model.purchase == prior.BgNbdPrior(GAP_WEEKS).mode()
    assert small_data(None, None).model == report.model
    assert "no purchases yet" in report.notes[0] and "alpha/r median" in report.notes[0]


def test_a_small_sample_gives_sane_clv() -> None:
    f, s = world(60)
    report = small_data(f, s)
    assert report.estimator is Estimator.map and report.model.spend is not None
    note = report.notes[0]
    assert f"{int(f.repeat_customers)} repeat-buying customers, fewer than the 500" in note
    assert "maximum a posteriori" in note and "Gamma-Gamma p median 2" in note

    # 240 spent in two purchases a week apart, a week ago: the heuristic promised about a
    # purchase a week for a year (several thousand); the small-data model shrinks that
    # towards the population.
    def clv(model: Model) -> float:
        s = score(
            model,
            Policy(),
            x=[1],
            t_x=[1.0],
            T=[2.0],
            mean_repeat_spend=[120.0],
            mean_spend=[120.0],
        )
        return float(s.clv[0])

    assert clv(Model(ModelKind.heuristic, TimeUnit.week, heuristic=Heuristic(GAP_WEEKS))) > 3_000
    assert 100 < clv(report.model) < 2_000
    # Over the sample, 39-week purchases are within a factor of two of the true model's.
    fitted = report.model.purchase
    assert isinstance(fitted, bgnbd.BgNbdParams)
    ours = bgnbd.conditional_expected_purchases(fitted, 39, f.x, f.t_x, f.T)
    truth = bgnbd.conditional_expected_purchases(WORLD, 39, f.x, f.t_x, f.T)
    assert 0.5 < ours.sum() / truth.sum() < 2


def test_without_repeat_buyers_there_is_no_spend_model() -> None:
    f = Frequencies.of([0, 0, 0], [0, 0, 0], [3.0, 10.0, 20.0])
    report = small_data(f, None)
    assert report.model.spend is None and report.estimator is Estimator.map
    assert any("own mean spend" in n for n in report.notes)
    p = report.model.purchase
    assert isinstance(p, bgnbd.BgNbdParams) and p.r > 0 and np.isfinite(p.alpha)
    # Nobody bought again: the data say "less often than the prior's typical gap".
    assert p.alpha / p.r > GAP_WEEKS


def test_pareto_nbd_is_for_full_fits_only() -> None:
    f, s = world(300)
    report = small_data(f, s, kind=ModelKind.pareto_nbd)
    assert report.model.kind is ModelKind.bgnbd and report.estimator is Estimator.map
    f, s = world(3_000)
    assert small_data(f, s).estimator is Estimator.mle


def test_top_decile_is_the_90th_percentile_of_clv() -> None:
    assert top_decile([]) is None
    assert top_decile(np.arange(1.0, 11.0)) == 9.1
    assert top_decile([5.0]) == 5.0


ROW = {
    "version": 7,
    "model": "bgnbd",
    "estimator": "map",
    "time_unit": "week",
    "purchase_params": {"r": 1.0, "alpha": GAP_WEEKS, "a": 0.5, "b": 1.5},
    "spend_params": {"p": 2.0, "q": 3.0, "gamma": 40.0},
    "typical_gap": GAP_WEEKS,
    "clv_top_decile": 512.25,
    "horizon_months": 24,
    "monthly_discount_rate": 0.02,
    "fitted_at": datetime(2026, 12, 1, 6, 0, tzinfo=UTC),
}


def test_a_stored_row_is_served_with_every_field_the_event_carries() -> None:
    served = served_model(ROW, Policy(12, 0.01))
    assert served.to_json() == {**ROW, "fitted_at": "2026-12-01T06:00:00+00:00", "rfm": None}
    # With its cut points (an rfm_cuts row), the announcement carries them.
    cuts = {"version": 4, "recency": [1.0, 2.0, 3.0, 4.0], "frequency": [1.0, 1.0, 2.0, 3.0],
            "monetary": [10.0, 20.0, 30.0, 40.0], "customers": 9}  # fmt: skip
    with_cuts = served_model(ROW, Policy(12, 0.01), cuts).to_json()
    assert with_cuts["rfm"] == {k: cuts[k] for k in ("version", "recency", "frequency", "monetary")}
    assert type(served).from_json(with_cuts).to_json() == with_cuts
    # The vectorised model scores as the served one's closed forms.
    s = Summary(x=2, t_x_days=60, T_days=100, mean_repeat_spend=30.0, mean_spend=35.0)
    one = served.score(s)
    whole = score(
        model_of(served),
        Policy(24, 0.02),
        x=[2],
        t_x=[60 / 7],
        T=[100 / 7],
        mean_repeat_spend=[30.0],
        mean_spend=[35.0],
    )
    assert one.clv == pytest.approx(whole.clv[0], rel=1e-9)
    assert model_of(served).version == 7
    # Another version with the same parameters scores everyone the same: nothing to announce.
    again = served_model({**ROW, "version": 8, "estimator": "mle"}, Policy())
    assert again.same_parameters(served)
    assert not served_model({**ROW, "clv_top_decile": 512.26}, Policy()).same_parameters(served)


def test_rows_stored_before_the_served_model_still_load() -> None:
    old = {
        **ROW,
        "estimator": None,
        "clv_top_decile": None,
        "horizon_months": None,
        "monthly_discount_rate": None,
    }
    served = served_model(old, Policy(12, 0.01))
    assert served.estimator == "mle" and served.clv_top_decile is None
    assert (served.horizon_months, served.monthly_discount_rate) == (12, 0.01)
    heuristic = served_model(
        {**old, "model": "heuristic", "purchase_params": None, "spend_params": None}, Policy()
    )
    assert heuristic.estimator is None
    model = model_of(heuristic)
    assert model.kind is ModelKind.heuristic and model.heuristic.typical_gap == GAP_WEEKS
