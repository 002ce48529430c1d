"""The models reproduce the published CDNOW results (2,357 customers, 39-week calibration,
weeks): Fader, Hardie & Lee (2005) for BG/NBD, Fader & Hardie (2013) for Gamma-Gamma, and
Fader & Hardie's Pareto/NBD note."""

from __future__ import annotations

from datetime import date
from functools import cache

import numpy as np
import pytest
from scoring_cdnow_data import datasets, published_summary

from clm_scoring import transactions_file
from clm_scoring.domain import bgnbd, gammagamma, paretonbd
from clm_scoring.domain.analysis import Calibration, calibrate
from clm_scoring.domain.summary import TimeUnit

CALIBRATION_END, HOLDOUT_END = date(1997, 9, 30), date(1998, 6, 30)


def sig3(value: float) -> float:
    return float(f"{value:.3g}")


@cache
def calibration() -> Calibration:
    data = transactions_file.read(datasets() / "CDNOW_sample.txt")
    return calibrate(
        data, calibration_end=CALIBRATION_END, holdout_end=HOLDOUT_END, unit=TimeUnit.week
    )


def test_raw_transactions_give_the_published_customer_summary() -> None:
    cal = calibration()
    # The sample file's second column is the summary's ID.
    sample_id = {
        line.split()[0]: int(line.split()[1])
        for line in (datasets() / "CDNOW_sample.txt").read_text().splitlines()
        if line.strip()
    }
    ours = {
        sample_id[c]: (cal.x[i], cal.t_x[i], cal.T[i], cal.mean_repeat_spend[i])
        for i, c in enumerate(cal.customer_ids)
    }
    published = published_summary()
    assert len(ours) == len(published) == 2357
    for row in published:
        x, t_x, T, zbar = ours[int(row["ID"])]
        assert x == row["x"]
        # The published file rounds to cents and hundredths of a week.
        assert [t_x, T, zbar] == pytest.approx([row["t_x"], row["T"], row["zbar"]], abs=0.0051)


def test_bgnbd_fit_equals_the_published_estimates() -> None:
    fit = bgnbd.fit(calibration().frequencies)
    p = fit.params
    assert fit.converged
    assert [sig3(v) for v in (p.r, p.alpha, p.a, p.b)] == [0.243, 4.41, 0.793, 2.43]
    assert round(fit.log_likelihood, 1) == -9582.4


def test_gamma_gamma_fit_equals_the_published_estimates() -> None:
    spends = calibration().spends
    assert spends is not None and spends.weight.sum() == 946
    fit = gammagamma.fit(spends)
    p = fit.params
    assert [sig3(v) for v in (p.p, p.q, p.gamma)] == [6.25, 3.74, 15.4]
    assert round(p.gamma, 1) == 15.4  # published 15.44


def test_pareto_nbd_fit_equals_the_published_estimates() -> None:
    fit = paretonbd.fit(calibration().frequencies)
    p = fit.params
    assert [round(v, 2) for v in (p.r, p.alpha, p.s, p.beta)] == [0.55, 10.58, 0.61, 11.67]
    assert round(fit.log_likelihood, 1) == -9595.0


def test_per_customer_predictions_equal_the_papers() -> None:
    """The paper's worked customer (x=2, t_x=30.43, T=38.86): 1.226 expected purchases in
    the next 39 weeks; and P(alive) as the published parameters give it."""
    fitted = bgnbd.fit(calibration().frequencies).params
    published = bgnbd.BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    expected = bgnbd.conditional_expected_purchases(fitted, 39, 2, 30.43, 38.86)
    assert round(float(expected), 3) == 1.226
    cal = calibration()
    np.testing.assert_allclose(
        bgnbd.p_alive(fitted, cal.x, cal.t_x, cal.T),
        bgnbd.p_alive(published, cal.x, cal.t_x, cal.T),
        atol=2e-3,
    )
    np.testing.assert_allclose(
        bgnbd.conditional_expected_purchases(fitted, 39, cal.x, cal.t_x, cal.T),
        bgnbd.conditional_expected_purchases(published, 39, cal.x, cal.t_x, cal.T),
        rtol=5e-3,
        atol=1e-3,
    )
    assert round(float(bgnbd.p_alive(fitted, 2, 30.43, 38.86)), 3) == 0.727


def test_holdout_predictions_track_actual_repeat_purchases_by_frequency() -> None:
    from clm_scoring.domain.analysis import fit_and_compare
    from clm_scoring.domain.scores import ModelKind

    out = fit_and_compare(
        calibration(),
        kind=ModelKind.bgnbd,
        unit=TimeUnit.week,
        calibration_end=CALIBRATION_END,
        holdout_end=HOLDOUT_END,
    )
    holdout = out["holdout"]
    assert holdout["length"] == 39.0
    assert holdout["actual_repeat_purchases"] == 1882
    groups = holdout["by_calibration_frequency"]
    assert [g["calibration_repeat_purchases"] for g in groups][-1] == "7+"
    # Conditional expectations rise with calibration frequency, as the actuals do.
    predicted = [g["predicted_mean"] for g in groups]
    assert predicted == sorted(predicted)
    for g in groups:
        assert g["predicted_mean"] == pytest.approx(g["actual_mean"], rel=0.35, abs=0.1)
