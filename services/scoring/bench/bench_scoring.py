"""Scoring benchmark: fit time against lifetimes on CDNOW (with the parameter difference),
fit and scoring time for 1M synthetic customers drawn from the BG/NBD process, the
service path (fit and rescore through PostgreSQL) on a smaller population, and how close
the small-data model fitted on a 10% sample comes to the full-data fit (CDNOW and a
synthetic population), with the old heuristic as the baseline; a full run adds that
comparison over 60 samples of five synthetic shops (how much of one sample's figure is the
sample).

    python services/scoring/bench/bench_scoring.py [--quick]

Starts its own PostgreSQL and broker, prints two tables, stops them. lifetimes is a
benchmark-only dependency (the service never imports it).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from scipy.stats import spearmanr
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.tansu import TansuBroker
from clm_events.migrations import migrate, migrate_auth
from clm_events.privacy import Tombstones
from clm_events.settings import ClmSettings
from clm_events.topics import Topics, ensure_topics
from clm_scoring import models
from clm_scoring.config import Settings
from clm_scoring.domain import bgnbd, gammagamma
from clm_scoring.domain.analysis import calibrate
from clm_scoring.domain.arrays import Floats, Frequencies, Spends
from clm_scoring.domain.fitting import FitReport, choose, typical_gap
from clm_scoring.domain.scores import Heuristic, Model, ModelKind, Policy, purchases, score
from clm_scoring.domain.summary import Order, TimeUnit, history
from clm_scoring.jobs import Jobs, Scorer
from clm_scoring.transactions_file import Transactions, read

T = TypeVar("T")
TRUE = bgnbd.BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def timed(work: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """Best of `repeat` runs (the machine is shared: the minimum is the least noisy)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return result, best  # type: ignore[return-value]


CDNOW_CALIBRATION_END = date(1997, 9, 30)


def cdnow_transactions() -> Transactions:
    spec = importlib.util.find_spec("lifetimes")
    assert spec and spec.submodule_search_locations
    return read(Path(next(iter(spec.submodule_search_locations))) / "datasets/CDNOW_sample.txt")


def cdnow(rows: list[tuple[str, str, str]], repeat: int) -> None:
    data = cdnow_transactions()
    cal = calibrate(
        data, calibration_end=CDNOW_CALIBRATION_END, holdout_end=None, unit=TimeUnit.week
    )
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    ours, t_ours = timed(lambda: bgnbd.fit(cal.frequencies), repeat)
    frame = pd.DataFrame({"x": cal.x, "t_x": cal.t_x, "T": cal.T, "z": cal.mean_repeat_spend})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, t_theirs = timed(
            lambda: BetaGeoFitter().fit(frame.x, frame.t_x, frame["T"]), repeat
        )
    diff = max(
        abs(v - theirs.params_[k]) / abs(theirs.params_[k])
        for k, v in ours.params.as_dict().items()
    )
    rows.append(("CDNOW BG/NBD fit, lifetimes (baseline)", f"{t_theirs * 1e3:.1f} ms", "1.00x"))
    rows.append(
        (
            "CDNOW BG/NBD fit, clm-scoring",
            f"{t_ours * 1e3:.1f} ms",
            f"{t_theirs / t_ours:.1f}x faster; max rel. param diff {diff:.1e}; "
            f"LL {ours.log_likelihood:.2f}",
        )
    )
    spends = cal.spends
    assert spends is not None
    repeat_frame = frame[frame.x > 0]
    g, t_g = timed(lambda: gammagamma.fit(spends), repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lg, t_lg = timed(lambda: GammaGammaFitter().fit(repeat_frame.x, repeat_frame.z), repeat)
    gdiff = max(
        abs(v - lg.params_[{"gamma": "v"}.get(k, k)]) / lg.params_[{"gamma": "v"}.get(k, k)]
        for k, v in g.params.as_dict().items()
    )
    rows.append(("CDNOW Gamma-Gamma fit, lifetimes (baseline)", f"{t_lg * 1e3:.1f} ms", "1.00x"))
    rows.append(
        (
            "CDNOW Gamma-Gamma fit, clm-scoring",
            f"{t_g * 1e3:.1f} ms",
            f"{t_lg / t_g:.1f}x faster; max rel. param diff {gdiff:.1e}",
        )
    )


def synthetic(rows: list[tuple[str, str, str]], n: int) -> None:
    rng = np.random.default_rng(42)
    # Whole days, as the service's summaries are, expressed in weeks.
    x, t_x, T = bgnbd.simulate(TRUE, rng.integers(7, 547, size=n) / 7, rng)
    t_x = np.where(x > 0, np.minimum(np.maximum(np.round(t_x * 7), 1), T * 7), 0) / 7
    spend = np.where(x > 0, rng.gamma(6.25, 1 / rng.gamma(3.74, 1 / 15.44, size=n)), 0.0)
    f = Frequencies.of(x, t_x, T)
    fit, t_fit = timed(lambda: bgnbd.fit(f))
    err = max(
        abs(v - TRUE.as_dict()[k]) / TRUE.as_dict()[k] for k, v in fit.params.as_dict().items()
    )
    s = Spends.of(x[x > 0], spend[x > 0])
    gfit, t_g = timed(lambda: gammagamma.fit(s))
    model = Model(ModelKind.bgnbd, TimeUnit.week, purchase=fit.params, spend=gfit.params)
    _, t_score = timed(
        lambda: score(model, Policy(), x=x, t_x=t_x, T=T, mean_repeat_spend=spend, mean_spend=spend)
    )
    label = f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n:,}"
    rows.append(
        (
            f"{label} synthetic customers: BG/NBD fit",
            f"{t_fit:.2f} s",
            f"{t_fit / 10:.2f}x of the 10 s goal; max rel. error vs true params {err:.3f}",
        )
    )
    rows.append((f"{label} synthetic customers: Gamma-Gamma fit", f"{t_g:.2f} s", ""))
    rows.append(
        (
            f"{label} synthetic customers: score (p_alive, 12-month CLV)",
            f"{t_score:.2f} s",
            f"{t_score / 5:.2f}x of the 5 s goal; {n / t_score:,.0f} customers/s",
        )
    )


@dataclass(frozen=True)
class Population:
    """Summaries in weeks: repeat purchases, recency, age, mean repeat spend, and mean
    spend over every purchase (what the heuristic used)."""

    x: Floats
    t_x: Floats
    T: Floats
    mean_repeat_spend: Floats
    mean_spend: Floats

    def take(self, index: np.ndarray) -> Population:
        return Population(*(v[index] for v in astuple(self)))

    @property
    def frequencies(self) -> Frequencies:
        return Frequencies.of(self.x, self.t_x, self.T)

    @property
    def spends(self) -> Spends | None:
        repeat = (self.x > 0) & (self.mean_repeat_spend > 0)
        return Spends.of(self.x[repeat], self.mean_repeat_spend[repeat]) if repeat.any() else None


def cdnow_population() -> Population:
    data = cdnow_transactions()
    cal = calibrate(
        data, calibration_end=CDNOW_CALIBRATION_END, holdout_end=None, unit=TimeUnit.week
    )
    mean_spend = []
    for c in cal.customer_ids:
        h = history(Order(d, a) for d, a in data[c] if d <= CDNOW_CALIBRATION_END)
        assert h is not None
        mean_spend.append(h.mean_spend)
    return Population(cal.x, cal.t_x, cal.T, cal.mean_repeat_spend, np.array(mean_spend))


# A synthetic shop unlike CDNOW: customers buy about every six weeks (r/alpha), a fifth of
# them lapse after a given purchase, and spend about 150 per purchase.
SYNTHETIC = bgnbd.BgNbdParams(r=0.8, alpha=5.0, a=1.5, b=6.0)
SYNTHETIC_SPEND = gammagamma.GammaGammaParams(p=3.0, q=5.0, gamma=200.0)
# More shops for --spread (weekly parameters, ages in weeks), none of them CDNOW's.
WORLDS = {
    "every 6 weeks, few lapse": (SYNTHETIC, SYNTHETIC_SPEND, (4, 52)),
    "rare, very uneven buyers": (
        bgnbd.BgNbdParams(0.3, 10.0, 0.5, 3.0),
        gammagamma.GammaGammaParams(2.0, 3.0, 50.0),
        (27, 39),
    ),
    "regular buyers, quick to lapse": (
        bgnbd.BgNbdParams(2.0, 20.0, 1.2, 2.0),
        gammagamma.GammaGammaParams(5.0, 8.0, 20.0),
        (4, 52),
    ),
    "frequent, loyal buyers": (
        bgnbd.BgNbdParams(0.5, 2.0, 0.3, 5.0),
        gammagamma.GammaGammaParams(1.5, 4.0, 100.0),
        (10, 78),
    ),
    "slow buyers over two years": (
        bgnbd.BgNbdParams(1.5, 30.0, 2.5, 10.0),
        gammagamma.GammaGammaParams(8.0, 3.0, 10.0),
        (4, 104),
    ),
}


def synthetic_population(
    n: int = 2_500,
    seed: int = 7,
    params: bgnbd.BgNbdParams = SYNTHETIC,
    spend: gammagamma.GammaGammaParams = SYNTHETIC_SPEND,
    ages: tuple[int, int] = (4, 52),
) -> Population:
    """The project's generator (bgnbd.simulate) with Gamma-Gamma spends: first purchases
    spread over `ages` (weeks), whole days, observed in weeks."""
    rng = np.random.default_rng(seed)
    days = rng.integers(ages[0] * 7, ages[1] * 7 + 1, size=n)
    x, t_x, T = bgnbd.simulate(params, days / 7, rng)
    t_x = np.where(x > 0, np.minimum(np.maximum(np.round(t_x * 7), 1), T * 7), 0) / 7
    nu = rng.gamma(spend.q, 1 / spend.gamma, size=n)  # each customer's spend rate
    repeat = x > 0
    mean_repeat = np.zeros(n)
    # The mean of x Gamma(p, nu) spends is Gamma(p x, nu x).
    mean_repeat[repeat] = rng.gamma(spend.p * x[repeat], 1 / (nu[repeat] * x[repeat]))
    first = rng.gamma(spend.p, 1 / nu)
    return Population(x, t_x, T, mean_repeat, (first + x * mean_repeat) / (x + 1))


HORIZON_WEEKS = 39.0
TYPICAL_GAP_DAYS = 90.0  # the service's default


def clv_39_weeks(model: Model, p: Population) -> Floats:
    """Expected purchases in the next 39 weeks times expected spend per purchase, as the
    service scores them but undiscounted (so the figure compares the models alone)."""
    _, cumulative = purchases(model, [HORIZON_WEEKS], p.x, p.t_x, p.T)
    spend = score(
        model,
        Policy(1, 0.0),
        x=p.x,
        t_x=p.t_x,
        T=p.T,
        mean_repeat_spend=p.mean_repeat_spend,
        mean_spend=p.mean_spend,
    ).expected_spend
    return np.asarray(cumulative[0] * spend, dtype=np.float64)


def fit(p: Population, min_repeat_customers: int) -> FitReport:
    return choose(
        p.frequencies,
        p.spends,
        kind=ModelKind.bgnbd,
        unit=TimeUnit.week,
        min_repeat_customers=min_repeat_customers,
        typical_gap_days=TYPICAL_GAP_DAYS,
    )


@dataclass(frozen=True)
class Comparison:
    sample: Population
    small: FitReport  # the small-data model on the sample
    full: FitReport  # the MLE on the whole population
    figures: dict[str, tuple[float, float]]  # model -> (mean ratio, Spearman) vs full


def compare(population: Population, seed: int) -> Comparison:
    """Fit the small-data model on a 10% sample, the full-data MLE on the whole population,
    and compare 39-week CLVs for the sample's customers: the small-data model, the old
    heuristic, and a plain MLE on the sample (what the sample alone can tell)."""
    n = population.x.size
    sample = population.take(np.sort(np.random.default_rng(seed).choice(n, n // 10, False)))
    full, small = fit(population, 1), fit(sample, 500)
    assert full.estimator.value == "mle" and small.estimator.value == "map"
    gap = typical_gap(sample.frequencies, TYPICAL_GAP_DAYS / 7)
    models = {
        "small-data MAP": small.model,
        "heuristic (baseline)": Model(ModelKind.heuristic, TimeUnit.week, heuristic=Heuristic(gap)),
        "MLE on the sample": fit(sample, 1).model,
    }
    reference = clv_39_weeks(full.model, sample)
    figures = {}
    for what, model in models.items():
        clv = clv_39_weeks(model, sample)
        figures[what] = (
            float(clv.mean() / reference.mean()),
            float(spearmanr(clv, reference).statistic),
        )
    return Comparison(sample, small, full, figures)


def meets(ratio: float, rho: float) -> str:
    return "met" if 0.75 <= ratio <= 1.25 and rho >= 0.8 else "missed"


def small_data(rows: list[tuple[str, str, str]], accuracy: list[tuple[str, ...]]) -> None:
    """The CDNOW and synthetic 10% samples (fixed seeds)."""
    for name, population in (("CDNOW", cdnow_population()), ("synthetic", synthetic_population())):
        c = compare(population, seed=1)
        rows.append(
            (
                f"{name} 10% sample: small-data MAP fit (BG/NBD + Gamma-Gamma)",
                f"{c.small.seconds * 1e3:.1f} ms",
                f"full-data MLE on all {population.x.size:,}: {c.full.seconds * 1e3:.1f} ms",
            )
        )
        label = f"{name}, 10% sample ({c.sample.x.size:,} customers, "
        label += f"{c.small.repeat_customers} repeat)"
        for what in ("small-data MAP", "heuristic (baseline)"):
            ratio, rho = c.figures[what]
            accuracy.append((label, what, f"{ratio:.3f}", f"{rho:.3f}", meets(ratio, rho)))


def spread(accuracy: list[tuple[str, ...]]) -> None:
    """The same comparison over five synthetic shops x 3 populations x 4 samples: how much
    of a single sample's figure is the prior and how much the sample."""
    for what in ("small-data MAP", "MLE on the sample"):
        ratios, rhos = [], []
        for params, spend, ages in WORLDS.values():
            for seed in range(3):
                population = synthetic_population(2_500, seed, params, spend, ages)
                for sample_seed in range(100, 104):
                    ratio, rho = compare(population, sample_seed).figures[what]
                    ratios.append(ratio)
                    rhos.append(rho)
        missed = sum(meets(r, s) == "missed" for r, s in zip(ratios, rhos, strict=True))
        accuracy.append(
            (
                f"5 synthetic shops, {len(ratios)} 10% samples (geometric mean, range)",
                what,
                f"{np.exp(np.log(ratios).mean()):.3f} ({min(ratios):.2f}-{max(ratios):.2f})",
                f"min {min(rhos):.3f}",
                f"met in {len(ratios) - missed}/{len(ratios)}",
            )
        )


async def service_path(rows: list[tuple[str, str, str]], url: str, bootstrap: str, n: int) -> None:
    """Fit and rescore through the database, as the service's schedule does."""
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:6]}.", partitions=2)
    await ensure_topics(bootstrap, topics.all())
    settings = Settings(min_repeat_customers=100, common=ClmSettings(database_url=url))
    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    rng = np.random.default_rng(1)
    ages = rng.integers(7, 540, size=n)
    params = bgnbd.BgNbdParams(TRUE.r, TRUE.alpha * 7, TRUE.a, TRUE.b)  # per day
    x, t_x, _ = bgnbd.simulate(params, ages, rng)
    today = date.today()
    t_x_days = np.where(x > 0, np.maximum(np.round(t_x), 1), 0).astype(int)
    days = np.where(x > 0, np.minimum(x + 1, t_x_days + 1), 1).astype(int)
    rows_db: list[dict[str, Any]] = [
        {
            "customer_id": f"c{i:07d}",
            "first_purchase_on": today - timedelta(days=int(ages[i])),
            "last_purchase_on": today - timedelta(days=int(ages[i] - t_x_days[i])),
            "purchase_days": int(days[i]),
            "first_spend": 30,
            "repeat_spend": 30 * int(days[i] - 1),
        }
        for i in range(n)
    ]
    async with sessions() as session, session.begin():
        await session.execute(sa.text("TRUNCATE scoring.customers, scoring.scores"))
        for start in range(0, n, 10_000):
            await session.execute(models.customers.insert(), rows_db[start : start + 10_000])
    tombstones = Tombstones(models.privacy_tombstones, b"bench", timedelta(days=1))
    jobs = Jobs(Scorer(settings, topics), sessions, tombstones)
    started = time.perf_counter()
    described = await jobs.refit(trigger="bench")
    t_refit = time.perf_counter() - started
    started = time.perf_counter()
    scored, published = await jobs.rescore_all()
    t_first = time.perf_counter() - started
    started = time.perf_counter()
    _, republished = await jobs.rescore_all()
    t_again = time.perf_counter() - started
    await engine.dispose()
    assert described is not None
    rows.append(
        (
            f"service refit from PostgreSQL, {n:,} customers",
            f"{t_refit:.2f} s",
            f"model {described['model']}, fit {described['fit']['duration_seconds']:.2f} s",
        )
    )
    rows.append(
        (
            f"service rescore, first pass (all published), {n:,}",
            f"{t_first:.2f} s",
            f"{scored / t_first:,.0f} customers/s; {published:,} events to the outbox (baseline)",
        )
    )
    rows.append(
        (
            f"service rescore, same day again, {n:,}",
            f"{t_again:.2f} s",
            f"{t_first / t_again:.2f}x faster than the first; {republished:,} published",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small populations, one repeat, no small-data spread over 60 samples",
    )
    args = parser.parse_args()
    synthetic_n = 50_000 if args.quick else 1_000_000
    service_n = 5_000 if args.quick else 100_000
    repeat = 1 if args.quick else 5

    rows: list[tuple[str, str, str]] = []
    accuracy: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        broker = TansuBroker(log_path=Path(tmp) / "tansu.log")
        pg.start()
        try:
            broker.start()
            try:
                migrate_auth(pg.url())
                migrate(
                    Path(models.__file__).parent / "migrations", url=pg.url(), schema=models.SCHEMA
                )
                cdnow(rows, repeat)
                synthetic(rows, synthetic_n)
                asyncio.run(service_path(rows, pg.url(), broker.bootstrap_servers, service_n))
            finally:
                broker.stop()
        finally:
            pg.stop()
    small_data(rows, accuracy)
    if not args.quick:
        spread(accuracy)

    width = max(len(r[0]) for r in rows)
    print(f"{'workload':<{width}}  {'time':>10}  vs baseline / goal")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")

    print()
    print(
        "39-week CLV of a 10% sample's customers (expected purchases x expected spend, "
        "undiscounted) vs the full-data MLE's; goals: mean ratio 0.75-1.25, Spearman >= 0.8"
    )
    header = ("population", "model", "mean ratio", "Spearman", "goals")
    widths = [max(len(a[k]) for a in (header, *accuracy)) for k in range(5)]
    for line in (header, *accuracy):
        print("  ".join(f"{v:<{w}}" for v, w in zip(line, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
