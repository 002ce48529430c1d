"""What scoring does, whatever triggered it: score customers (after their purchases, or
on the schedule as they stay silent), and refit the model. Each takes the session of a
transaction its caller owns and never commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.envelope import CloudEvent, new_event
from clm_events.outbox import add_events
from clm_events.topics import Topics
from clm_scoring import metrics, models, repository
from clm_scoring.config import Settings
from clm_scoring.domain.fitting import FitReport, choose
from clm_scoring.domain.scores import Model, Policy, Published, PublishRule, material
from clm_scoring.domain.scores import score as compute_scores
from clm_scoring.domain.summary import summarize

log = logging.getLogger(__name__)

SOURCE = "clm/scoring"


def today() -> date:
    return datetime.now(UTC).date()


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

    def fallback(self) -> Model:
        """Before any fit exists: the heuristic with the configured default gap."""
        unit = self.settings.time_unit
        report = choose(
            None,
            None,
            kind=self.settings.model,
            unit=unit,
            min_repeat_customers=self.settings.min_repeat_customers,
            default_gap=self.settings.heuristic_default_gap_days / unit.days,
        )
        return report.model

    async def served_model(self, session: AsyncSession) -> Model:
        current = await repository.current_model(session)
        return current.model if current else self.fallback()

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
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        events: list[CloudEvent] = []
        for i, c in enumerate(customers):
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
            }
            before = (
                Published(c.published_churn_probability, c.published_clv, c.published_model)
                if c.published_churn_probability is not None
                and c.published_clv is not None
                and c.published_model is not None
                else None
            )
            if material(self.rule, before, churn_i, clv, model.kind.value):
                count = c.published_count + 1
                event = new_event(
                    "lifecycle.score_updated",
                    # Stable: a replay of this transaction reproduces the same id.
                    id=f"score:{c.customer_id}:{count}",
                    source=SOURCE,
                    subject=c.customer_id,
                    time=now,
                    data={
                        "clv": Decimal(f"{clv:.2f}"),
                        "churn_probability": churn_i,
                        "p_alive": p_alive,
                        "expected_purchases": expected,
                        "model": model.kind.value,
                    },
                )
                events.append(event)
                row.update(
                    published_churn_probability=churn_i,
                    published_clv=clv,
                    published_model=model.kind.value,
                    published_count=count,
                )
            rows.append(row)
            metrics.CHURN_PROBABILITY.observe(churn_i)
            metrics.CLV.observe(clv)
        await repository.save_scores(session, rows)
        await add_events(session, models.outbox, self.topics.scores, events)
        metrics.SCORES_COMPUTED.labels(trigger).inc(len(rows))
        metrics.SCORES_PUBLISHED.labels(trigger).inc(len(events))
        return len(events)


@dataclass
class Jobs:
    """The scheduled and on-demand work: refit and rescore everyone."""

    scorer: Scorer
    sessions: async_sessionmaker[AsyncSession]

    @property
    def settings(self) -> Settings:
        return self.scorer.settings

    async def refit(
        self, *, trigger: str, wait: bool = True, as_of: date | None = None
    ) -> dict[str, Any] | None:
        """Fit on every customer's summary and store a new model version. If another refit
        runs, wait for it and fit again (`wait`), or return None. The fit itself runs in
        a worker thread."""
        as_of = as_of or today()
        s = self.settings
        unit = s.time_unit
        async with self.sessions() as session, session.begin():
            if not await repository.refit_lock(session, wait=wait):
                return None
            freq, spends, first = await repository.fitting_data(session, as_of, unit)
            report: FitReport = await asyncio.to_thread(
                choose,
                freq,
                spends,
                kind=s.model,
                unit=unit,
                min_repeat_customers=s.min_repeat_customers,
                default_gap=s.heuristic_default_gap_days / unit.days,
            )
            version = await repository.save_model(
                session, report, window_start=first, window_end=as_of, trigger=trigger
            )
        metrics.FIT_SECONDS.observe(report.seconds)
        log.info(
            "model fitted",
            extra={
                "version": version,
                "model": report.model.kind.value,
                "customers": report.customers,
                "seconds": round(report.seconds, 3),
            },
        )
        return await self.describe_model()

    async def describe_model(self) -> dict[str, Any]:
        async with self.sessions() as session:
            current = await repository.current_model(session)
        if current is None:
            model = self.scorer.fallback()
            return {
                "model": model.kind.value,
                "version": None,
                "time_unit": model.time_unit.value,
                "notes": ["no model fitted yet: scores use the heuristic"],
                **self._policy(),
            }
        row, model = current.row, current.model
        metrics.served(
            model.kind.value,
            model.version,
            {**(row["purchase_params"] or {}), **(row["spend_params"] or {})},
            row["log_likelihood"],
        )
        metrics.model_fitted_at(current.fitted_at.timestamp())
        return {
            "model": model.kind.value,
            "version": model.version,
            "time_unit": model.time_unit.value,
            "purchase_params": row["purchase_params"],
            "spend_model": "gamma_gamma" if row["spend_params"] else None,
            "spend_params": row["spend_params"],
            "typical_gap": row["typical_gap"],
            "fit": {
                "customers": row["customers"],
                "repeat_customers": row["repeat_customers"],
                "log_likelihood": row["log_likelihood"],
                "spend_log_likelihood": row["spend_log_likelihood"],
                "window_start": row["window_start"],
                "window_end": row["window_end"],
                "duration_seconds": row["duration_seconds"],
                "fitted_at": row["fitted_at"],
                "age_seconds": (datetime.now(UTC) - current.fitted_at).total_seconds(),
                "trigger": row["trigger"],
            },
            "notes": row["notes"],
            **self._policy(),
        }

    def _policy(self) -> dict[str, Any]:
        s = self.settings
        return {
            "horizon_months": s.horizon_months,
            "monthly_discount_rate": s.monthly_discount_rate,
            "minimum_repeat_customers": s.min_repeat_customers,
        }

    async def rescore_all(self, *, as_of: date | None = None) -> tuple[int, int]:
        """Rescore every customer, a page per transaction; return (scored, published)."""
        as_of = as_of or today()
        after: str | None = None
        scored = published = 0
        while True:
            async with self.sessions() as session, session.begin():
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
        while True:
            try:
                if await self.refit(trigger="schedule", wait=False) is not None:
                    await self.rescore_all()
            except Exception:
                log.exception("scheduled refit failed; retrying at the next interval")
            await asyncio.sleep(self.settings.refit_interval)

    async def rescore_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescore_interval)
            try:
                scored, published = await self.rescore_all()
                log.info("rescored", extra={"customers": scored, "published": published})
            except Exception:
                log.exception("scheduled rescore failed; retrying at the next interval")
