"""What scoring does, whatever triggered it: score customers (after their purchases, or
on the schedule as they stay silent), and refit the model. Each takes the session of a
transaction its caller owns and never commits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events import rfm
from clm_events.envelope import CloudEvent, new_event
from clm_events.outbox import add_events
from clm_events.privacy import Tombstones
from clm_events.scoremodel import ServedModel
from clm_events.topics import Topics
from clm_scoring import metrics, models, repository
from clm_scoring.config import Settings
from clm_scoring.domain.arrays import Frequencies, Spends
from clm_scoring.domain.fitting import FitReport, choose
from clm_scoring.domain.scores import (
    Model,
    ModelKind,
    Policy,
    Published,
    PublishRule,
    material,
    top_decile,
)
from clm_scoring.domain.scores import score as compute_scores
from clm_scoring.domain.summary import PurchaseHistory, summarize
from clm_scoring.served import cuts_of, model_of, served_model

log = logging.getLogger(__name__)

SOURCE = "clm/scoring"
MODEL_SUBJECT = "score-model"


def today() -> date:
    return datetime.now(UTC).date()


def score_event_id(customer_id: str, count: int) -> str:
    """The id of a customer's `count`-th published score. Stable, so a replay of the
    transaction reproduces it and consumers dedupe it; a hash, so no consumer's
    processed-events table names the customer (an erasure could not reach it there)."""
    key = json.dumps([customer_id, count]).encode()
    return "score-" + hashlib.sha256(key).hexdigest()[:32]


@dataclass(frozen=True)
class Scorer:
    """Scores customers under the served model and queues the material moves."""

    settings: Settings
    topics: Topics

    @property
    def policy(self) -> Policy:
        return Policy(self.settings.horizon_months, self.settings.monthly_discount_rate)

    @property
    def rule(self) -> PublishRule:
        s = self.settings
        return PublishRule(
            s.publish_min_churn_change, s.publish_min_clv_change, s.publish_min_clv_change_abs
        )

    def fit(self, freq: Frequencies | None, spends: Spends | None) -> FitReport:
        """The model to serve for this data (None, None: before any purchase)."""
        s = self.settings
        return choose(
            freq,
            spends,
            kind=s.model,
            unit=s.time_unit,
            min_repeat_customers=s.min_repeat_customers,
            typical_gap_days=s.typical_gap_days,
        )

    def served(self, row: Mapping[str, Any], cuts: Mapping[str, Any] | None = None) -> ServedModel:
        return served_model(row, self.policy, cuts)

    async def served_model(self, session: AsyncSession) -> Model:
        """The latest version; before any, the small-data model's prior mode."""
        row = await repository.current_model(session)
        return model_of(self.served(row)) if row else self.fit(None, None).model

    def top_decile(self, model: Model, base: repository.Base) -> float | None:
        """The CLV at the 90th percentile of the base, scored under `model`."""
        if base.x.size == 0:
            return None
        s = compute_scores(
            model,
            self.policy,
            x=base.x,
            t_x=base.t_x,
            T=base.T,
            mean_repeat_spend=base.mean_repeat_spend,
            mean_spend=base.mean_spend,
        )
        return top_decile(s.clv)

    async def score(
        self,
        session: AsyncSession,
        customers: Sequence[repository.ToScore],
        *,
        model: Model,
        as_of: date,
        trigger: str,
    ) -> int:
        """Score these customers as of `as_of`; return how many scores were published."""
        if not customers:
            return 0
        unit = model.time_unit
        summaries = [summarize(c.history, as_of, unit) for c in customers]
        s = compute_scores(
            model,
            self.policy,
            x=[v.x for v in summaries],
            t_x=[v.t_x for v in summaries],
            T=[v.T for v in summaries],
            mean_repeat_spend=[v.mean_repeat_spend for v in summaries],
            mean_spend=[v.mean_spend for v in summaries],
        )
        churn = s.churn_probability
        cuts = await repository.current_cuts(session)
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        events: list[CloudEvent] = []
        moves: list[dict[str, Any]] = []
        for i, c in enumerate(customers):
            r = rfm_of(cuts, c.history, as_of)
            clv = round(float(s.clv[i]), 2)
            p_alive, churn_i = float(s.p_alive[i]), float(churn[i])
            expected = float(s.expected_purchases[i])
            row: dict[str, Any] = {
                "customer_id": c.customer_id,
                "p_alive": p_alive,
                "churn_probability": churn_i,
                "expected_purchases": expected,
                "expected_spend": float(s.expected_spend[i]),
                "clv": clv,
                "model": model.kind.value,
                "model_version": model.version,
                "as_of": as_of,
                "scored_at": now,
                "published_churn_probability": c.published_churn_probability,
                "published_clv": c.published_clv,
                "published_model": c.published_model,
                "published_count": c.published_count,
                **r,
                "published_rfm_cell": c.published_rfm_cell,
            }
            if r["rfm_segment"] is not None and r["rfm_segment"] != c.rfm_segment:
                moves.append(
                    {
                        "customer_id": c.customer_id,
                        "moved_at": now,
                        "from_segment": c.rfm_segment,
                        "to_segment": r["rfm_segment"],
                    }
                )
            before = (
                Published(c.published_churn_probability, c.published_clv, c.published_model)
                if c.published_churn_probability is not None
                and c.published_clv is not None
                and c.published_model is not None
                else None
            )
            # A new RFM cell is a move too: consumers keep the cell and segment published.
            if (
                material(self.rule, before, churn_i, clv, model.kind.value)
                or r["rfm_cell"] != c.published_rfm_cell
            ):
                count = c.published_count + 1
                event = new_event(
                    "lifecycle.score_updated",
                    id=score_event_id(c.customer_id, count),
                    source=SOURCE,
                    subject=c.customer_id,
                    time=now,
                    data={
                        "clv": Decimal(f"{clv:.2f}"),
                        "churn_probability": churn_i,
                        "p_alive": p_alive,
                        "expected_purchases": expected,
                        "model": model.kind.value,
                        **{k: v for k, v in r.items() if k != "rfm_version" and v is not None},
                    },
                )
                events.append(event)
                row.update(
                    published_churn_probability=churn_i,
                    published_clv=clv,
                    published_model=model.kind.value,
                    published_count=count,
                    published_rfm_cell=r["rfm_cell"],
                )
            rows.append(row)
            metrics.CHURN_PROBABILITY.observe(churn_i)
            metrics.CLV.observe(clv)
        await repository.save_scores(session, rows)
        await repository.add_moves(session, moves)
        await add_events(session, models.outbox, self.topics.scores, events)
        metrics.SCORES_COMPUTED.labels(trigger).inc(len(rows))
        metrics.SCORES_PUBLISHED.labels(trigger).inc(len(events))
        return len(events)


def rfm_of(cuts: Mapping[str, Any] | None, h: PurchaseHistory, as_of: date) -> dict[str, Any]:
    """The score row's RFM columns under these cut points (all null without any)."""
    if cuts is None:
        return dict.fromkeys(RFM_COLUMNS)
    r = rfm.score(
        cuts_of(cuts),
        (as_of - h.last_day).days,
        h.purchase_days,
        float(h.first_spend + h.repeat_spend),
    )
    return {
        "rfm_recency": r.recency,
        "rfm_frequency": r.frequency,
        "rfm_monetary": r.monetary,
        "rfm_cell": r.cell,
        "rfm_segment": r.segment,
        "rfm_version": cuts["version"],
    }


RFM_COLUMNS = (
    "rfm_recency",
    "rfm_frequency",
    "rfm_monetary",
    "rfm_cell",
    "rfm_segment",
    "rfm_version",
)


def event(served: ServedModel) -> CloudEvent:
    """The served-model event, one per announced (model version, cut-point version): its
    id, so a relay publishing it twice is deduplicated downstream."""
    rfm_version = served.rfm.version if served.rfm else None
    suffix = f":rfm:{rfm_version}" if rfm_version is not None else ""
    return new_event(
        "lifecycle.score_model_served",
        id=f"{MODEL_SUBJECT}:{served.version}{suffix}",
        source=SOURCE,
        subject=MODEL_SUBJECT,
        time=served.fitted_at,
        data=served.to_json(),
    )


def describe_cuts(row: Mapping[str, Any] | None) -> dict[str, Any]:
    """GET /v1/rfm/cuts: the current cut points, or nulls before any."""
    keys = ("version", "computed_at", "as_of", "customers", "trigger")
    cuts = ("recency", "frequency", "monetary")
    if row is None:
        return {**dict.fromkeys(keys), **dict.fromkeys(cuts), "quantiles": list(rfm.QUANTILES)}
    return {
        **{k: row[k] for k in keys},
        **{k: list(row[k]) for k in cuts},
        "quantiles": list(rfm.QUANTILES),
    }


@dataclass
class Jobs:
    """The scheduled and on-demand work: refit and rescore everyone."""

    scorer: Scorer
    sessions: async_sessionmaker[AsyncSession]
    tombstones: Tombstones  # its guard keeps rescores and erasures apart

    @property
    def settings(self) -> Settings:
        return self.scorer.settings

    async def refit(
        self, *, trigger: str, wait: bool = True, as_of: date | None = None
    ) -> dict[str, Any] | None:
        """Fit on every customer's summary, store a new model version and new RFM cut
        points and, unless they score everyone as the last announced ones do, queue their
        lifecycle.score_model_served in the same transaction. If another refit runs, wait
        for it and fit again (`wait`), or return None. The fit and the scoring for the top
        decile run in a worker thread."""
        as_of = as_of or today()
        scorer = self.scorer
        # No erasure guard: a refit writes a model version, aggregates of everyone that
        # an erasure keeps, and no customer's row; erasures need not wait for a fit.
        async with self.sessions() as session, session.begin():
            if not await repository.refit_lock(session, wait=wait):
                return None
            unit = self.settings.time_unit
            freq, spends, first = await repository.fitting_data(session, as_of, unit)
            base = await repository.base(session, as_of, unit)
            report = await asyncio.to_thread(scorer.fit, freq, spends)
            decile = await asyncio.to_thread(scorer.top_decile, report.model, base)
            row = await repository.save_model(
                session,
                report,
                window_start=first,
                window_end=as_of,
                trigger=trigger,
                clv_top_decile=decile,
                policy=scorer.policy,
            )
            await self._store_cuts(session, trigger="refit", as_of=as_of)
            served, published = await self._announce(session, row)
        metrics.FIT_SECONDS.observe(report.seconds)
        log.info(
            "model fitted",
            extra={
                "version": served.version,
                "model": served.model,
                "estimator": served.estimator,
                "customers": report.customers,
                "seconds": round(report.seconds, 3),
                "published": published,
            },
        )
        return await self.describe_model()

    async def recompute_cuts(self, *, trigger: str, as_of: date | None = None) -> dict[str, Any]:
        """Store new RFM cut points over the current base (none while it is empty),
        announce them with the served model unless their points are the last announced
        ones, and return the current ones; scores take them at their next rescore."""
        as_of = as_of or today()
        async with self.sessions() as session, session.begin():
            if await self._store_cuts(session, trigger=trigger, as_of=as_of):
                # The refit lock orders announcements: each reads the latest model and
                # cut points once it holds it, so consumers never see either go back.
                await repository.refit_lock(session, wait=True)
                model = await repository.current_model(session)
                if model is not None:
                    await self._announce(session, model)
            row = await repository.current_cuts(session)
        return describe_cuts(row)

    async def _store_cuts(self, session: AsyncSession, *, trigger: str, as_of: date) -> bool:
        """New cut points over the base as of `as_of`; False when it is empty."""
        recency, frequency, monetary = await repository.rfm_measures(session, as_of)
        if not recency.size:
            return False
        cuts = rfm.cuts_of(recency, frequency, monetary)
        await repository.save_cuts(
            session, cuts, as_of=as_of, customers=int(recency.size), trigger=trigger
        )
        return True

    async def _announce(
        self, session: AsyncSession, model: Mapping[str, Any]
    ) -> tuple[ServedModel, bool]:
        """Queue the served model (this model_versions row with the current cut points)
        unless it scores everyone, RFM included, as the last announced one. The caller
        holds the refit lock."""
        scorer = self.scorer
        cuts = await repository.current_cuts(session)
        served = scorer.served(model, cuts)
        last, last_cuts = (
            await repository.last_published_model(session),
            await repository.last_published_cuts(session),
        )
        published = not served.same_parameters(scorer.served(last, last_cuts) if last else None)
        if published:
            await add_events(session, models.outbox, scorer.topics.models, [event(served)])
            await repository.mark_published(session, served.version)
            if cuts is not None:
                await repository.mark_cuts_published(session, cuts["version"])
        return served, published

    async def prune_moves(self, now: datetime | None = None) -> int:
        """Drop RFM segment changes older than RFM_MOVES_DAYS (each customer's last one
        before that stays: their segment then); return how many."""
        before = (now or datetime.now(UTC)) - timedelta(days=self.settings.rfm_moves_days)
        async with self.sessions() as session, session.begin():
            return await repository.prune_moves(session, before)

    async def describe_model(self) -> dict[str, Any]:
        """What is served and why: GET /v1/model."""
        async with self.sessions() as session:
            row = await repository.current_model(session)
        if row is None:
            report = self.scorer.fit(None, None)
            model = report.model
            return {
                "model": model.kind.value,
                "estimator": report.estimator.value,
                "version": None,
                "time_unit": model.time_unit.value,
                "purchase_params": model.purchase.as_dict() if model.purchase else None,
                "spend_model": None,
                "spend_params": None,
                "typical_gap": model.heuristic.typical_gap,
                "clv_top_decile": None,
                "fit": None,
                "published_at": None,
                "notes": ["no model version stored yet", *report.notes],
                **self._policy(self.scorer.policy),
            }
        served = self.scorer.served(row)
        fitted_at: datetime = row["fitted_at"]
        metrics.served(
            served.model,
            served.version,
            {**(served.purchase_params or {}), **(served.spend_params or {})},
            row["log_likelihood"],
        )
        metrics.model_fitted_at(fitted_at.timestamp())
        notes = list(row["notes"])
        if served.model == ModelKind.heuristic.value:
            notes.append(
                "this heuristic version was stored by an earlier release; the next refit "
                "replaces it by the small-data or the full model"
            )
        return {
            "model": served.model,
            "estimator": served.estimator,
            "version": served.version,
            "time_unit": served.time_unit,
            "purchase_params": served.purchase_params,
            "spend_model": "gamma_gamma" if served.spend_params else None,
            "spend_params": served.spend_params,
            "typical_gap": served.typical_gap,
            "clv_top_decile": served.clv_top_decile,
            "fit": {
                "customers": row["customers"],
                "repeat_customers": row["repeat_customers"],
                "log_likelihood": row["log_likelihood"],
                "spend_log_likelihood": row["spend_log_likelihood"],
                "window_start": row["window_start"],
                "window_end": row["window_end"],
                "duration_seconds": row["duration_seconds"],
                "fitted_at": fitted_at,
                "age_seconds": (datetime.now(UTC) - fitted_at).total_seconds(),
                "trigger": row["trigger"],
            },
            "published_at": row["published_at"],
            "notes": notes,
            **self._policy(Policy(served.horizon_months, served.monthly_discount_rate)),
        }

    def _policy(self, policy: Policy) -> dict[str, Any]:
        return {
            "horizon_months": policy.horizon_months,
            "monthly_discount_rate": policy.monthly_discount_rate,
            "minimum_repeat_customers": self.settings.min_repeat_customers,
        }

    async def rescore_all(self, *, as_of: date | None = None) -> tuple[int, int]:
        """Rescore every customer, a page per transaction; return (scored, published)."""
        as_of = as_of or today()
        after: str | None = None
        scored = published = 0
        while True:
            async with self.sessions() as session, session.begin():
                # The guard first: an erasure in progress commits before the page is read,
                # and one arriving meanwhile waits for the page to commit, then erases its
                # scores too. The page's customers are read (locked) and scored in this
                # one transaction, never from an earlier read, so no score is written back
                # for a customer erased since.
                await self.tombstones.guard(session)
                model = await self.scorer.served_model(session)
                page = await repository.page_to_score(
                    session, after, self.settings.rescore_page_size
                )
                if not page:
                    break
                published += await self.scorer.score(
                    session, page, model=model, as_of=as_of, trigger="schedule"
                )
            scored += len(page)
            after = page[-1].customer_id
        async with self.sessions() as session:
            buckets = await repository.churn_distribution(session)
        for b in range(10):
            metrics.CUSTOMERS_BY_CHURN.labels(f"{b / 10:.1f}-{(b + 1) / 10:.1f}").set(
                buckets.get(b, 0)
            )
        return scored, published

    async def refit_loop(self) -> None:
        # A restart does not refit: the served model, under which the stage engine
        # evaluates every customer, changes on schedule, on demand, or when none exists.
        await asyncio.sleep(await self.until_refit_due())
        while True:
            try:
                if await self.refit(trigger="schedule", wait=False) is not None:
                    await self.rescore_all()
            except Exception:
                log.exception("scheduled refit failed; retrying at the next interval")
            await asyncio.sleep(self.settings.refit_interval)

    async def until_refit_due(self) -> float:
        """Seconds until the served model is REFIT_INTERVAL old (0: fit now, when there
        is none or it is an earlier release's heuristic)."""
        async with self.sessions() as session:
            current = await repository.current_model(session)
        if current is None or current["model"] == ModelKind.heuristic.value:
            return 0.0
        age: float = (datetime.now(UTC) - current["fitted_at"]).total_seconds()
        return max(0.0, self.settings.refit_interval - age)

    async def rfm_loop(self) -> None:
        """New cut points every RFM_INTERVAL (a refit computes them too), then rescore
        and prune the segment changes past their retention."""
        delay = await self.until_cuts_due()
        while True:
            await asyncio.sleep(delay)
            try:
                await self.recompute_cuts(trigger="schedule")
                await self.rescore_all()
                if pruned := await self.prune_moves():
                    log.info("RFM moves pruned", extra={"rows": pruned})
            except Exception:
                log.exception("scheduled RFM cut points failed; retrying at the next interval")
            delay = self.settings.rfm_interval

    async def until_cuts_due(self) -> float:
        """Seconds until the current cut points are RFM_INTERVAL old (0: none yet)."""
        async with self.sessions() as session:
            current = await repository.current_cuts(session)
        if current is None:
            return 0.0
        age: float = (datetime.now(UTC) - current["computed_at"]).total_seconds()
        return max(0.0, self.settings.rfm_interval - age)

    async def rescore_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescore_interval)
            try:
                scored, published = await self.rescore_all()
                log.info("rescored", extra={"customers": scored, "published": published})
            except Exception:
                log.exception("scheduled rescore failed; retrying at the next interval")
