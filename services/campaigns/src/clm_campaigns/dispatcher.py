"""The dispatcher: claims due actions and delivers them, surviving crashes.

Three stages run side by side so no stage waits for another's batch: a claimer (one
transaction, FOR UPDATE SKIP LOCKED) keeps up to `dispatch_batch_size` actions in flight,
`dispatch_concurrency` senders deliver them (no transaction open), and a recorder writes
the outcomes of whatever finished meanwhile in one transaction. A process that dies after
the claim leaves its actions in `sending` until the claim's lease lapses; another pass then
sends them again with the same action id (the webhook-id / Message-ID), which receivers use
to drop the repeat. Kafka actions leave through the outbox in the claim's own transaction,
so they are exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import metrics, repository
from clm_campaigns.channels import EmailSender, Outcome, WebhookSender
from clm_campaigns.clock import Clock
from clm_campaigns.config import Settings
from clm_campaigns.domain.evaluate import (
    needs_state,
    occasion_of,
    rechecks_membership,
    still_sendable,
)
from clm_campaigns.domain.policy import retry_delay
from clm_campaigns.domain.triggers import (
    STORED,
    CompiledTrigger,
    TriggerDefinition,
    compile_trigger,
)
from clm_campaigns.handlers import Fired, actions_fired
from clm_campaigns.journeys import JourneyCache
from clm_campaigns.models import outbox
from clm_campaigns.repository import Claimed
from clm_events.outbox import add_message
from clm_events.privacy import Tombstones
from clm_events.producer import Message

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        actions_topic: str,
        tombstones: Tombstones,
        on_outbox: Any = None,
        clock: Clock | None = None,
        journeys: JourneyCache | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock or Clock()
        self._journeys = journeys or JourneyCache()
        self._tombstones = tombstones
        self._s = settings
        self._actions_topic = actions_topic
        self._on_outbox = on_outbox
        self.webhooks = WebhookSender(settings)
        self.email = EmailSender(settings)
        self._wake = asyncio.Event()
        self._to_send: asyncio.Queue[tuple[Claimed, float]] = asyncio.Queue()
        self._done: list[tuple[Claimed, Outcome]] = []
        self._has_done = asyncio.Event()
        self._in_flight = 0  # claimed, not yet recorded
        self._last_gauges = 0.0
        self._triggers: dict[tuple[str, int], CompiledTrigger] = {}  # by (id, version)

    def wake(self) -> None:
        """Claim now instead of at the next poll (called after a commit wrote actions)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as stages:
                stages.create_task(self._claimer())
                stages.create_task(self._recorder())
                for _ in range(self._s.dispatch_concurrency):
                    stages.create_task(self._sender())
        finally:
            await self.webhooks.close()

    # -- claim -------------------------------------------------------------------------

    async def _claimer(self) -> None:
        backoff = self._s.dispatch_poll_interval
        while True:
            window = self._s.dispatch_batch_size
            full = False
            # Refill once half the window is free: fewer, larger claims under load.
            if self._in_flight <= window // 2:
                try:
                    free = window - self._in_flight
                    full = await self.claim_once(free) == free
                    if time.monotonic() - self._last_gauges > 2:
                        await self._update_gauges()
                    backoff = self._s.dispatch_poll_interval
                except Exception:
                    log.warning("dispatch pass failed; retrying", exc_info=True)
                    backoff = min(backoff * 2, 10.0)
            if full:
                continue  # more may be due: claim again as soon as the window allows
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass

    async def claim_once(self, limit: int) -> int:
        """Claim up to `limit` due actions and queue them for the senders; return the count."""
        # A send should end (timeout included) before the lease lapses, or another pass
        # could claim and send the action while this one still holds it. Sends that could
        # not start in time are left for the next claim (a short lease: its first half).
        lease_s, timeout_s = self._s.dispatch_lease_seconds, self._s.webhook_timeout_seconds
        deadline = time.monotonic() + max(lease_s - timeout_s, lease_s / 2)
        lease = timedelta(seconds=self._s.dispatch_lease_seconds)
        async with self._sessions() as session, session.begin():
            # First: an erasure in progress commits before this claim reads its actions
            # (they are suppressed then), or waits until this claim has committed.
            await self._tombstones.guard(session)
            claimed = await repository.claim_due(
                session, limit=limit, lease=lease, now=self._clock.now()
            )
            stopped = await self._recheck(session, claimed)
            claimed = [c for c in claimed if c.id not in stopped]
            kafka = [c for c in claimed if c.channel == "kafka"]
            if kafka:
                await self._publish(session, kafka)
        if kafka and self._on_outbox is not None:
            self._on_outbox()
        for c in claimed:
            if c.channel != "kafka":
                self._in_flight += 1
                self._to_send.put_nowait((c, deadline))
        return len(claimed)

    async def _recheck(self, session: AsyncSession, claimed: list[Claimed]) -> dict[str, str]:
        """Exit criteria at send time: suppress (with the reason) claimed actions whose
        trigger was disabled since, whose condition no longer holds on the customer's
        current state, or (if the trigger asks) whose customer left its stage, or whose
        segment entry (or exit) was undone."""
        if not claimed:
            return {}
        found = await repository.trigger_versions_of(
            session, ((c.trigger_id, c.trigger_version) for c in claimed if "/" not in c.trigger_id)
        )
        triggers = {key: (self._compiled(key, d), on) for key, (d, on) in found.items()}
        triggers.update(await self._journey_sends(session, claimed))
        readers = [c for c in claimed if _key(c) in triggers and needs_state(triggers[_key(c)][0])]
        states = await repository.load_customers(
            session, sorted({c.customer_id for c in readers}), lock=False
        )
        asked = {
            c.id: (segment, c.customer_id)
            for c in claimed
            if _key(c) in triggers and (segment := rechecks_membership(triggers[_key(c)][0]))
        }
        members = await repository.memberships_among(session, asked.values())
        stopped: dict[str, str] = {}
        for c in claimed:
            if _key(c) not in triggers:  # no such version any more: nothing to send it by
                stopped[c.id] = "trigger_disabled"
                continue
            trigger, enabled = triggers[_key(c)]
            state = states.get(c.customer_id)
            reason = still_sendable(
                trigger,
                enabled=enabled,
                state=state,
                occasion=occasion_of(c.occasion),
                member=asked[c.id] in members if c.id in asked else None,
            )
            if reason is not None:
                stopped[c.id] = reason
        if stopped:
            await repository.suppress_claimed(session, stopped)
            gone = [(c, "suppressed") for c in claimed if c.id in stopped]
            await actions_fired(session, self._actions_topic, [_fired(c, s) for c, s in gone])
            for reason, n in Counter(stopped.values()).items():
                metrics.SUPPRESSIONS.labels(reason).inc(n)
            _count(gone, datetime.now(UTC))
        return stopped

    async def _journey_sends(
        self, session: AsyncSession, claimed: list[Claimed]
    ) -> dict[tuple[str, int], tuple[CompiledTrigger, bool]]:
        """A journey's send steps (trigger id `<journey>/<step>`) as the one-step triggers
        they are, from the version the action is of; enabled while the journey is."""
        keys = {
            (c.trigger_id.partition("/")[0], c.trigger_version)
            for c in claimed
            if "/" in c.trigger_id
        }
        if not keys:
            return {}
        found = await self._journeys.versions(session, keys)
        out: dict[tuple[str, int], tuple[CompiledTrigger, bool]] = {}
        for c in claimed:
            journey_id, _, step_id = c.trigger_id.partition("/")
            hit = found.get((journey_id, c.trigger_version))
            if step_id and hit is not None and step_id in hit[0].sends:
                out[_key(c)] = (hit[0].sends[step_id], hit[1])
        return out

    def _compiled(self, key: tuple[str, int], definition: dict[str, Any]) -> CompiledTrigger:
        compiled = self._triggers.get(key)
        if compiled is None:
            stored = TriggerDefinition.model_validate(definition, context=STORED)
            compiled = self._triggers[key] = compile_trigger(key[0], key[1], stored)
        return compiled

    async def _publish(self, session: AsyncSession, claimed: list[Claimed]) -> None:
        """Kafka actions: the message goes into the outbox in the claiming transaction."""
        now = self._clock.now()
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
        await actions_fired(session, self._actions_topic, [_fired(c, "delivered") for c in claimed])
        await repository.finish(
            session, [_row(c, "delivered", now, delivered_at=now) for c in claimed]
        )
        _count([(c, "delivered") for c in claimed], now)

    # -- send --------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            c, deadline = await self._to_send.get()
            if time.monotonic() > deadline:
                # Waited too long behind slow receivers: leave it to be claimed again once
                # its lease lapses rather than risk two senders at once.
                self._in_flight -= 1
                continue
            try:
                outcome = await self._deliver(c)
            except Exception as exc:  # a bug in a sender must not stop every delivery
                log.exception("delivery raised", extra={"action_id": c.id})
                outcome = Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
            self._done.append((c, outcome))
            self._has_done.set()

    async def _deliver(self, c: Claimed) -> Outcome:
        if c.channel == "webhook":
            return await self.webhooks.send(
                action_id=c.id, target=c.target, payload=c.payload, secret=c.secret
            )
        if c.channel == "email":
            return await self.email.send(action_id=c.id, target=c.target, payload=c.payload)
        return Outcome(False, f"unknown channel {c.channel}", retryable=False)

    # -- record ------------------------------------------------------------------------

    async def _recorder(self) -> None:
        """Record whatever finished since the last pass, in one transaction."""
        backoff = self._s.dispatch_poll_interval
        while True:
            await self._has_done.wait()
            self._has_done.clear()
            results, self._done = self._done, []
            try:
                await self.record(results)
            except Exception:
                # Kept and retried: until recorded the actions stay claimed (`sending`).
                log.warning("recording delivery outcomes failed; retrying", exc_info=True)
                self._done[:0] = results
                self._has_done.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = self._s.dispatch_poll_interval
            self._in_flight -= len(results)
            if self._in_flight <= self._s.dispatch_batch_size // 2:
                self._wake.set()

    async def record(self, results: list[tuple[Claimed, Outcome]]) -> None:
        """Record outcomes: delivered, scheduled again with backoff, or failed for good."""
        now = self._clock.now()
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
            await self._tombstones.guard(session)
            # An action whose customer was erased since its claim is not recorded as the
            # customer's (its row stays anonymous) nor announced (that would name them).
            done = await repository.finish(session, rows)
            final = [(c, status) for c, status in final if c.id in done]
            await actions_fired(
                session, self._actions_topic, [_fired(c, status) for c, status in final]
            )
        if final and self._on_outbox is not None:
            self._on_outbox()
        _count(final, now)
        for c, status in final:
            if status == "failed":
                log.warning(
                    "action failed for good",
                    extra={"action_id": c.id, "trigger_id": c.trigger_id, "attempts": c.attempts},
                )

    async def _update_gauges(self) -> None:
        self._last_gauges = time.monotonic()
        async with self._sessions() as session:
            count, age = await repository.backlog(session)
        metrics.BACKLOG.set(count)
        metrics.BACKLOG_AGE.set(age)


def _count(final: list[tuple[Claimed, str]], now: datetime) -> None:
    """Metrics of actions that reached a final status, with one labels() lookup per series
    and batch rather than per action (a lookup costs about as much as the observation)."""
    for (trigger, channel, status), n in Counter(
        (c.trigger_id, c.channel, status) for c, status in final
    ).items():
        metrics.ACTIONS.labels(trigger, channel, status).inc(n)
    latency: dict[str, Any] = {}
    for c, status in final:
        if status == "delivered":
            histogram = latency.get(c.channel)
            if histogram is None:
                histogram = latency[c.channel] = metrics.TRANSITION_TO_DELIVERY.labels(c.channel)
            histogram.observe(max(0.0, (now - c.cause_time).total_seconds()))


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


def _key(c: Claimed) -> tuple[str, int]:
    return (c.trigger_id, c.trigger_version)


def _fired(c: Claimed, status: str) -> Fired:
    return Fired(c.id, c.customer_id, c.trigger_id, c.channel, status)
