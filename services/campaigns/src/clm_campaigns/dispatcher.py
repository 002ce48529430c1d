"""The dispatcher: claims due actions and delivers them, surviving crashes.

Claim (one transaction, FOR UPDATE SKIP LOCKED) -> send (no transaction open) -> record
outcomes (one transaction). A process that dies after the claim leaves its actions in
`sending` until the claim's lease lapses; another pass then sends them again with the same
action id (the webhook-id / Message-ID), which receivers use to drop the repeat. Kafka
actions leave through the outbox in the claim's own transaction, so they are exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import metrics, repository
from clm_campaigns.channels import EmailSender, Outcome, WebhookSender
from clm_campaigns.config import Settings
from clm_campaigns.domain.policy import retry_delay
from clm_campaigns.handlers import action_fired
from clm_campaigns.models import outbox
from clm_campaigns.repository import Claimed
from clm_events.outbox import add_message
from clm_events.producer import Message

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        actions_topic: str,
        on_outbox: Any = None,
    ) -> None:
        self._sessions = sessions
        self._s = settings
        self._actions_topic = actions_topic
        self._on_outbox = on_outbox
        self.webhooks = WebhookSender(settings)
        self.email = EmailSender(settings)
        self._gate = asyncio.Semaphore(settings.dispatch_concurrency)
        self._wake = asyncio.Event()
        self._last_gauges = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = self._s.dispatch_poll_interval
        try:
            while True:
                try:
                    sent = await self.dispatch_once()
                    if time.monotonic() - self._last_gauges > 2:
                        await self._update_gauges()
                    backoff = self._s.dispatch_poll_interval
                except Exception:
                    log.warning("dispatch pass failed; retrying", exc_info=True)
                    sent = 0
                    backoff = min(backoff * 2, 10.0)
                if sent >= self._s.dispatch_batch_size:
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
                except TimeoutError:
                    pass
        finally:
            await self.webhooks.close()

    async def dispatch_once(self) -> int:
        """One pass: claim up to a batch of due actions, deliver, record; return the count."""
        lease = timedelta(seconds=self._s.dispatch_lease_seconds)
        async with self._sessions() as session, session.begin():
            claimed = await repository.claim_due(
                session, limit=self._s.dispatch_batch_size, lease=lease
            )
            kafka = [c for c in claimed if c.channel == "kafka"]
            if kafka:
                await self._publish(session, kafka)
        if kafka and self._on_outbox is not None:
            self._on_outbox()
        others = [c for c in claimed if c.channel != "kafka"]
        if others:
            outcomes = await asyncio.gather(*(self._deliver(c) for c in others))
            await self.record(list(zip(others, outcomes, strict=True)))
        return len(claimed)

    async def _publish(self, session: AsyncSession, claimed: list[Claimed]) -> None:
        """Kafka actions: the message goes into the outbox in the claiming transaction."""
        now = datetime.now(UTC)
        for c in claimed:
            await add_message(
                session,
                outbox,
                Message(
                    topic=str(c.target["topic"]),
                    key=c.customer_id.encode(),
                    value=c.payload.encode(),
                    headers=[
                        ("clm-action-id", c.id.encode()),
                        ("clm-trigger-id", c.trigger_id.encode()),
                    ],
                ),
            )
            await action_fired(session, self._actions_topic, **_announce(c, "delivered"))
        await repository.finish(
            session,
            [
                {
                    "id": c.id,
                    "status": "delivered",
                    "due_at": now,
                    "delivered_at": now,
                    "last_error": None,
                }
                for c in claimed
            ],
        )
        for c in claimed:
            self._count(c, "delivered", now)

    async def _deliver(self, c: Claimed) -> Outcome:
        async with self._gate:
            if c.channel == "webhook":
                return await self.webhooks.send(
                    action_id=c.id, target=c.target, payload=c.payload, secret=c.secret
                )
            if c.channel == "email":
                return await self.email.send(action_id=c.id, target=c.target, payload=c.payload)
            return Outcome(False, f"unknown channel {c.channel}", retryable=False)

    async def record(self, results: list[tuple[Claimed, Outcome]]) -> None:
        """Record outcomes: delivered, scheduled again with backoff, or failed for good."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        final: list[tuple[Claimed, str]] = []
        for c, outcome in results:
            if outcome.ok:
                rows.append(_row(c, "delivered", now, delivered_at=now))
                final.append((c, "delivered"))
            elif outcome.retryable and c.attempts < self._s.max_attempts:
                delay = retry_delay(
                    c.attempts,
                    base=self._s.retry_base_seconds,
                    cap=self._s.retry_max_seconds,
                    jitter=random.random(),
                )
                rows.append(_row(c, "pending", now + timedelta(seconds=delay), error=outcome.error))
                metrics.RETRIES.labels(c.channel).inc()
            else:
                rows.append(_row(c, "failed", now, error=outcome.error))
                final.append((c, "failed"))
        async with self._sessions() as session, session.begin():
            await repository.finish(session, rows)
            for c, status in final:
                await action_fired(session, self._actions_topic, **_announce(c, status))
        if final and self._on_outbox is not None:
            self._on_outbox()
        for c, status in final:
            self._count(c, status, now)
            if status == "failed":
                log.warning(
                    "action failed for good",
                    extra={"action_id": c.id, "trigger_id": c.trigger_id, "attempts": c.attempts},
                )

    @staticmethod
    def _count(c: Claimed, status: str, now: datetime) -> None:
        metrics.ACTIONS.labels(c.trigger_id, c.channel, status).inc()
        if status == "delivered":
            metrics.TRANSITION_TO_DELIVERY.labels(c.channel).observe(
                max(0.0, (now - c.cause_time).total_seconds())
            )

    async def _update_gauges(self) -> None:
        self._last_gauges = time.monotonic()
        async with self._sessions() as session:
            count, age = await repository.backlog(session)
        metrics.BACKLOG.set(count)
        metrics.BACKLOG_AGE.set(age)


def _row(
    c: Claimed,
    status: str,
    due_at: datetime,
    *,
    delivered_at: datetime | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "id": c.id,
        "status": status,
        "due_at": due_at,
        "delivered_at": delivered_at,
        "last_error": error,
    }


def _announce(c: Claimed, status: str) -> dict[str, str]:
    return {
        "action_id": c.id,
        "customer_id": c.customer_id,
        "trigger_id": c.trigger_id,
        "channel": c.channel,
        "status": status,
    }
