"""The analyst's calibration/holdout fit, as `clm-scoring fit` runs it and as the
literature reports it: parameters and log-likelihood on the calibration period, then
predicted vs actual repeat purchases in the holdout, overall and by calibration frequency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import numpy as np

from clm_scoring.domain import bgnbd, gammagamma, paretonbd
from clm_scoring.domain.arrays import Floats, Frequencies, Spends
from clm_scoring.domain.scores import ModelKind
from clm_scoring.domain.summary import Split, TimeUnit, split

FREQUENCY_GROUPS = 7  # calibration repeat purchases 0..6, then "7+" (as in the paper's plot)


@dataclass(frozen=True)
class Calibration:
    customer_ids: list[str]
    x: Floats
    t_x: Floats
    T: Floats
    mean_repeat_spend: Floats
    holdout: Floats  # repeat purchases in the holdout (zeros without one)

    @property
    def frequencies(self) -> Frequencies:
        return Frequencies.of(self.x, self.t_x, self.T)

    @property
    def spends(self) -> Spends | None:
        repeat = (self.x > 0) & (self.mean_repeat_spend > 0)
        if not np.any(repeat):
            return None
        return Spends.of(self.x[repeat], self.mean_repeat_spend[repeat])


def calibrate(
    transactions: Mapping[str, Sequence[tuple[date, Decimal]]],
    *,
    calibration_end: date,
    holdout_end: date | None,
    unit: TimeUnit,
) -> Calibration:
    if holdout_end is not None and holdout_end <= calibration_end:
        raise ValueError("the holdout must end after the calibration period")
    ids: list[str] = []
    splits: list[Split] = []
    for customer, days in transactions.items():
        s = split(days, calibration_end=calibration_end, holdout_end=holdout_end, unit=unit)
        if s is not None:
            ids.append(customer)
            splits.append(s)
    if not splits:
        raise ValueError(f"no customer bought on or before the calibration end {calibration_end}")
    c = [s.calibration for s in splits]
    return Calibration(
        ids,
        np.array([v.x for v in c], dtype=np.float64),
        np.array([v.t_x for v in c], dtype=np.float64),
        np.array([v.T for v in c], dtype=np.float64),
        np.array([v.mean_repeat_spend for v in c], dtype=np.float64),
        np.array([s.holdout_purchases for s in splits], dtype=np.float64),
    )


def fit_and_compare(
    cal: Calibration,
    *,
    kind: ModelKind,
    unit: TimeUnit,
    calibration_end: date,
    holdout_end: date | None,
) -> dict[str, Any]:
    f = cal.frequencies
    params: bgnbd.BgNbdParams | paretonbd.ParetoNbdParams
    if kind is ModelKind.pareto_nbd:
        pf = paretonbd.fit(f)
        params, ll, converged, seconds = pf.params, pf.log_likelihood, pf.converged, pf.seconds
    else:
        bf = bgnbd.fit(f)
        params, ll, converged, seconds = bf.params, bf.log_likelihood, bf.converged, bf.seconds
        kind = ModelKind.bgnbd
    out: dict[str, Any] = {
        "model": kind.value,
        "time_unit": unit.value,
        "calibration_end": calibration_end.isoformat(),
        "customers": int(f.customers),
        "repeat_customers": int(f.repeat_customers),
        "params": params.as_dict(),
        "log_likelihood": ll,
        "converged": converged,
        "fit_seconds": seconds,
    }
    spends = cal.spends
    if spends is not None:
        g = gammagamma.fit(spends)
        out["spend_model"] = {
            "model": "gamma_gamma",
            "customers": int(spends.weight.sum()),
            "params": g.params.as_dict(),
            "log_likelihood": g.log_likelihood,
            "converged": g.converged,
        }
    if holdout_end is not None:
        length = (holdout_end - calibration_end).days / unit.days
        if isinstance(params, bgnbd.BgNbdParams):
            predicted = bgnbd.conditional_expected_purchases(params, length, cal.x, cal.t_x, cal.T)
        else:
            predicted = paretonbd.conditional_expected_purchases(
                params, length, cal.x, cal.t_x, cal.T
            )
        groups = np.minimum(cal.x, FREQUENCY_GROUPS).astype(int)
        by_frequency = []
        for k in range(FREQUENCY_GROUPS + 1):
            mask = groups == k
            if not np.any(mask):
                continue
            by_frequency.append(
                {
                    "calibration_repeat_purchases": f"{k}+" if k == FREQUENCY_GROUPS else str(k),
                    "customers": int(mask.sum()),
                    "predicted_mean": float(predicted[mask].mean()),
                    "actual_mean": float(cal.holdout[mask].mean()),
                }
            )
        out["holdout"] = {
            "holdout_end": holdout_end.isoformat(),
            "length": length,
            "predicted_repeat_purchases": float(predicted.sum()),
            "actual_repeat_purchases": int(cal.holdout.sum()),
            "by_calibration_frequency": by_frequency,
        }
    return out
