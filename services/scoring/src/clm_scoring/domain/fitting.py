"""Which model to serve given the data: a maximum-likelihood fit when there is enough, an
explained heuristic otherwise (never a silent nonsense fit)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from clm_scoring.domain import bgnbd, gammagamma, paretonbd
from clm_scoring.domain.arrays import Frequencies, Spends
from clm_scoring.domain.scores import HEURISTIC_EXPLANATION, Heuristic, Model, ModelKind
from clm_scoring.domain.summary import TimeUnit


@dataclass(frozen=True)
class FitReport:
    model: Model
    customers: int
    repeat_customers: int
    log_likelihood: float | None
    spend_log_likelihood: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)


def typical_gap(f: Frequencies, default: float) -> float:
    """Median time between purchases of repeat customers (weighted), or `default`."""
    buyers = f.x > 0
    if not np.any(buyers):
        return default
    gaps = f.t_x[buyers] / f.x[buyers]
    weights = f.weight[buyers]
    order = np.argsort(gaps)
    cumulative = np.cumsum(weights[order])
    median = gaps[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(median) if median > 0 else default


def choose(
    f: Frequencies | None,
    spends: Spends | None,
    *,
    kind: ModelKind,
    unit: TimeUnit,
    min_repeat_customers: int,
    default_gap: float,
) -> FitReport:
    started = time.perf_counter()
    if f is None:
        return FitReport(
            Model(ModelKind.heuristic, unit, heuristic=Heuristic(default_gap)),
            0,
            0,
            None,
            None,
            time.perf_counter() - started,
            ["no purchases yet. " + HEURISTIC_EXPLANATION],
        )
    heuristic = Heuristic(typical_gap(f, default_gap))
    customers, repeat = int(f.customers), int(f.repeat_customers)
    if repeat < min_repeat_customers:
        note = (
            f"{repeat} repeat-buying customers, fewer than the {min_repeat_customers} a "
            f"reliable fit needs. " + HEURISTIC_EXPLANATION
        )
        return _heuristic(unit, heuristic, customers, repeat, started, note)

    purchase: bgnbd.BgNbdParams | paretonbd.ParetoNbdParams
    if kind is ModelKind.pareto_nbd:
        pf = paretonbd.fit(f)
        purchase, ll, ok = pf.params, pf.log_likelihood, pf.converged
    else:
        bf = bgnbd.fit(f)
        purchase, ll, ok = bf.params, bf.log_likelihood, bf.converged
        kind = ModelKind.bgnbd
    values = np.array(list(purchase.as_dict().values()))
    if not ok or not np.all(np.isfinite(values)) or np.any(values < 1e-8) or np.any(values > 1e8):
        note = f"the {kind.value} fit did not converge to usable parameters. " + (
            HEURISTIC_EXPLANATION
        )
        return _heuristic(unit, heuristic, customers, repeat, started, note)

    notes: list[str] = []
    spend: gammagamma.GammaGammaParams | None = None
    spend_ll: float | None = None
    if spends is not None:
        sf = gammagamma.fit(spends)
        if sf.converged and sf.params.q > 1:
            spend, spend_ll = sf.params, sf.log_likelihood
        else:
            notes.append(
                "the Gamma-Gamma spend fit has no finite mean (q <= 1) or did not converge: "
                "expected spend is each customer's own mean spend"
            )
    return FitReport(
        Model(kind, unit, purchase=purchase, spend=spend, heuristic=heuristic),
        customers,
        repeat,
        ll,
        spend_ll,
        time.perf_counter() - started,
        notes,
    )


def _heuristic(
    unit: TimeUnit, h: Heuristic, customers: int, repeat: int, started: float, note: str
) -> FitReport:
    return FitReport(
        Model(ModelKind.heuristic, unit, heuristic=h),
        customers,
        repeat,
        None,
        None,
        time.perf_counter() - started,
        [note],
    )
