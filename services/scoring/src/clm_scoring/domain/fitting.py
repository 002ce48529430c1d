"""Which model to serve given the data: a maximum-likelihood fit when there is enough, the
small-data model (MAP with weakly informative priors, `prior.py`) otherwise, and the
priors' mode before any purchase. Never a silent nonsense fit: the notes say what is
served and why."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from clm_scoring.domain import bgnbd, gammagamma, paretonbd, prior
from clm_scoring.domain.arrays import Frequencies, Spends
from clm_scoring.domain.scores import Heuristic, Model, ModelKind
from clm_scoring.domain.summary import TimeUnit


class Estimator(StrEnum):
    mle = "mle"  # maximum likelihood, from MIN_REPEAT_CUSTOMERS repeat buyers on
    map = "map"  # maximum a posteriori under the small-data priors


@dataclass(frozen=True)
class FitReport:
    model: Model
    estimator: Estimator
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
    typical_gap_days: float,
) -> FitReport:
    """The model to serve for these customers (None: nobody bought yet). Below
    `min_repeat_customers` repeat buyers, and when a full fit fails, the small-data BG/NBD
    is served whatever `kind` says: Pareto/NBD has no small-data form here."""
    started = time.perf_counter()
    priors = prior.Priors(prior.BgNbdPrior(typical_gap_days / unit.days))
    described = priors.describe(unit.days)
    if f is None:
        model = Model(
            ModelKind.bgnbd,
            unit,
            purchase=prior.fit_purchases(None, priors.purchase).params,
            heuristic=Heuristic(priors.purchase.typical_gap),
        )
        note = (
            "no purchases yet: the small-data model's prior mode (the priors' medians) is "
            f"served, without a spend model; {described}"
        )
        return FitReport(
            model, Estimator.map, 0, 0, None, None, time.perf_counter() - started, [note]
        )
    heuristic = Heuristic(typical_gap(f, priors.purchase.typical_gap))
    customers, repeat = int(f.customers), int(f.repeat_customers)
    notes: list[str] = []
    if repeat >= min_repeat_customers:
        full = _full_fit(f, spends, kind, unit, heuristic, started)
        if full is not None:
            return full
        notes.append(
            f"the {kind.value} maximum-likelihood fit did not converge to usable parameters"
        )
    else:
        notes.append(
            f"{repeat} repeat-buying customers, fewer than the {min_repeat_customers} a "
            "maximum-likelihood fit needs"
        )
    notes[0] += (
        ": serving the small-data model, BG/NBD and Gamma-Gamma fitted by maximum a "
        "posteriori with weakly informative priors, which the data outweigh as they grow; "
        f"{described}"
    )
    bf = prior.fit_purchases(f, priors.purchase)
    purchase, ll = bf.params, bf.log_likelihood
    usable = bf.converged and _usable(purchase.as_dict())
    if not usable:
        purchase = priors.purchase.mode()
        notes.append("the MAP fit did not converge: the priors' mode is served")
    spend: gammagamma.GammaGammaParams | None = None
    spend_ll: float | None = None
    if spends is None:
        notes.append(
            "no repeat purchase with a spend to fit: expected spend is each customer's own "
            "mean spend"
        )
    else:
        sf = prior.fit_spend(spends, priors.spend)
        if sf.converged and sf.params.q > 1 and _usable(sf.params.as_dict()):
            spend, spend_ll = sf.params, sf.log_likelihood
        else:
            notes.append(NO_SPEND_MODEL)
    model = Model(ModelKind.bgnbd, unit, purchase=purchase, spend=spend, heuristic=heuristic)
    seconds = time.perf_counter() - started
    return FitReport(
        model, Estimator.map, customers, repeat, ll if usable else None, spend_ll, seconds, notes
    )


NO_SPEND_MODEL = (
    "the Gamma-Gamma spend fit has no finite mean (q <= 1) or did not converge: "
    "expected spend is each customer's own mean spend"
)


def _usable(params: dict[str, float]) -> bool:
    values = np.array(list(params.values()))
    return bool(np.all(np.isfinite(values)) and np.all(values > 1e-8) and np.all(values < 1e8))


def _full_fit(
    f: Frequencies,
    spends: Spends | None,
    kind: ModelKind,
    unit: TimeUnit,
    heuristic: Heuristic,
    started: float,
) -> FitReport | None:
    """Maximum-likelihood fits; None if the purchase model did not converge."""
    purchase: bgnbd.BgNbdParams | paretonbd.ParetoNbdParams
    if kind is ModelKind.pareto_nbd:
        pf = paretonbd.fit(f)
        purchase, ll, ok = pf.params, pf.log_likelihood, pf.converged
    else:
        bf = bgnbd.fit(f)
        purchase, ll, ok = bf.params, bf.log_likelihood, bf.converged
        kind = ModelKind.bgnbd
    if not (ok and _usable(purchase.as_dict())):
        return None
    notes: list[str] = []
    spend: gammagamma.GammaGammaParams | None = None
    spend_ll: float | None = None
    if spends is not None:
        sf = gammagamma.fit(spends)
        if sf.converged and sf.params.q > 1 and _usable(sf.params.as_dict()):
            spend, spend_ll = sf.params, sf.log_likelihood
        else:
            notes.append(NO_SPEND_MODEL)
    model = Model(kind, unit, purchase=purchase, spend=spend, heuristic=heuristic)
    customers, repeat = int(f.customers), int(f.repeat_customers)
    seconds = time.perf_counter() - started
    return FitReport(model, Estimator.mle, customers, repeat, ll, spend_ll, seconds, notes)
