"""Journeys at run time: the consumer starts, exits and wakes customers' runs in its
batch's transaction, and the runner moves due runs through their steps.

Exactly once per customer entry: a run is a row, and everything a step does (the action
it records, the step's log row, the run's new position) is written in the transaction
that claimed the run. A crash before the commit leaves the run where it was, due, and a
later pass runs the step again from there; after the commit the step is done. The step
log's key (run, step) refuses a second execution outright. A send step's action is sent
by the dispatcher with the guarantees of any action (one record, the same webhook-id on
a re-send).

Lock order, as in a consumed batch: customers, then their runs. The runner claims due
runs with SKIP LOCKED and then locks their customers skipping those a batch holds, so a
batch never waits for the runner while the runner waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import metrics, repository
from clm_campaigns.clock import Clock
from clm_campaigns.domain.evaluate import condition_context, entry_key, fires_on, occasion_of
from clm_campaigns.domain.journeys import (
    BranchStep,
    CompiledJourney,
    ExitStep,
    JourneyDefinition,
    SendStep,
    SplitStep,
    WaitForStep,
    WaitStep,
    arm_of,
    compile_journey,
    wait_until,
)
from clm_campaigns.domain.projection import CustomerState, Occasion
from clm_campaigns.domain.triggers import STORED
from clm_campaigns.repository import Run, RunEntry
from clm_events.envelope import Event

log = logging.getLogger(__name__)


class JourneyCache:
    """Journeys compiled once per version: the enabled ones (entries) and any version a
    run is on (runs finish on the version they entered with)."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, int], CompiledJourney] = {}

    def compiled(
        self, journey_id: str, version: int, definition: dict[str, Any]
    ) -> CompiledJourney:
        key = (journey_id, version)
        if key not in self._compiled:
            stored = JourneyDefinition.model_validate(definition, context=STORED)
            self._compiled[key] = compile_journey(journey_id, version, stored)
        return self._compiled[key]

    async def enabled(self, session: AsyncSession) -> list[CompiledJourney]:
        return [self.compiled(*row) for row in await repository.enabled_journeys(session)]

    async def versions(
        self, session: AsyncSession, keys: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[CompiledJourney, bool]]:
        """(journey, enabled now) per (id, version)."""
        found = await repository.journey_versions_of(session, keys)
        return {k: (self.compiled(k[0], k[1], d), on) for k, (d, on) in found.items()}


def why_not(
    journey: CompiledJourney,
    state: CustomerState,
    occasion: Occasion,
    key: str,
    earlier: Sequence[RunEntry],
    now: datetime,
) -> tuple[str, dict[str, Any]] | None:
    """Why this occasion does not start a run (reason, what was seen); None: it does."""
    d = journey.definition
    if occasion.backfill and not occasion.send_actions:
        return "backfill", {"event": occasion.event_id}
    age = d.max_age_seconds
    if age is not None and now - occasion.time > timedelta(seconds=age):
        return "stale", {"event_time": occasion.time.isoformat(), "max_age_seconds": age}
    condition = journey.entry.condition
    context = condition_context(state, occasion, condition.reads)
    if not condition.matches(context):
        return "condition_false", {"condition": d.entry.condition, "values": _seen(context)}
    mine = [e for e in earlier if e.journey_id == journey.id]
    if any(e.key == key for e in mine):
        return "duplicate_entry", {"entry": key}
    reentry = d.reentry
    if reentry.mode == "once" and mine:
        return "reentry_limit", {"mode": "once", "entries": len(mine)}
    if reentry.mode == "once_per" and reentry.period_seconds is not None:
        period = timedelta(seconds=reentry.period_seconds)
        if any(abs(e.cause_time - occasion.time) < period for e in mine):
            return "reentry_limit", {"mode": "once_per", "period_seconds": reentry.period_seconds}
    return None


def _seen(context: dict[str, Any]) -> dict[str, Any]:
    """The values a condition saw, small enough to keep: no event payloads."""
    return {k: v for k, v in context.items() if k != "event"}


@dataclass
class Started:
    runs: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def start(
    compiled: Sequence[CompiledJourney],
    occasions: Sequence[tuple[CustomerState, Occasion]],
    earlier: dict[str, list[RunEntry]],
    now: datetime,
) -> Started:
    """The runs a batch's occasions start (in order: a second entry in the same batch
    sees the first), and why the others do not."""
    out = Started()
    for state, occasion in occasions:
        for journey in compiled:
            if not fires_on(journey.entry, occasion):
                continue
            key = entry_key(journey.entry, occasion)  # a trigger's rule: one stay, one entry
            mine = earlier.setdefault(state.customer_id, [])
            refused = why_not(journey, state, occasion, key, mine, now)
            if refused is not None:
                reason, detail = refused
                detail = {**detail, "occasion": occasion.event_type}
                out.decisions.append(
                    {
                        "journey_id": journey.id,
                        "customer_id": state.customer_id,
                        "at": now,
                        "reason": reason,
                        "detail": detail,
                    }
                )
                continue
            mine.append(RunEntry(journey.id, key, occasion.time))
            cause = f"{occasion.event_source}/{occasion.transition_id or occasion.event_id}"
            out.runs.append(
                {
                    "id": f"run_{uuid.uuid4().hex}",
                    "journey_id": journey.id,
                    "journey_version": journey.version,
                    "customer_id": state.customer_id,
                    "entry_key": key,
                    "status": "active",
                    "step_id": journey.first,
                    "due_at": now,
                    "step_at": occasion.time,
                    "cause_event": cause,
                    "cause_time": occasion.time,
                    "occasion": occasion.as_context(),
                    "entered_at": now,
                }
            )
    return out


SEEN_PER_TYPE = 20  # the latest event times kept per watched type


def on_events(
    runs: Sequence[Run],
    journeys: dict[tuple[str, int], tuple[CompiledJourney, bool]],
    events: Sequence[Event],
    now: datetime,
) -> list[Run]:
    """A batch's events for runs under way: an exit event ends its run; an event a
    wait_for step watches is kept on the run (its time), and wakes the run if it waits on
    that step and the event falls in the step's window. Only events at or after the
    run's entry count (a late event from before it entered is no reason to leave).
    Returns the runs changed."""
    changed: dict[str, Run] = {}
    for run in runs:
        found = journeys.get((run.journey_id, run.journey_version))
        if found is None:
            continue
        journey = found[0]
        exits = {e.value for e in journey.definition.exit.events}
        watched = {e.value for e in journey.waits_for}
        for e in events:
            if e.subject != run.customer_id or e.time < run.cause_time:
                continue
            if e.type in exits:
                finish(run, "exited", now, reason=f"event:{e.type}")
                changed[run.id] = run
                break
            if e.type not in watched:
                continue
            times = run.seen.setdefault(e.type, [])
            times[:] = sorted({*times, e.time.isoformat()})[-SEEN_PER_TYPE:]
            changed[run.id] = run
            step = journey.steps.get(run.step_id or "")
            if run.status == "waiting" and isinstance(step, WaitForStep):
                if step.event.value == e.type and _in_window(step, run.step_at, e.time):
                    run.due_at = now
    return list(changed.values())


def _in_window(step: WaitForStep, start: datetime, at: datetime) -> bool:
    return start <= at <= start + timedelta(seconds=step.timeout_seconds)


def _came(step: WaitForStep, run: Run) -> bool:
    """Whether the awaited event happened within the step's window (by event time)."""
    times = run.seen.get(step.event.value, [])
    return any(_in_window(step, run.step_at, datetime.fromisoformat(t)) for t in times)


def finish(run: Run, status: str, now: datetime, *, reason: str | None = None) -> None:
    run.status, run.finished_at, run.exit_reason = status, now, reason
    run.due_at = None


@dataclass
class Pass:
    """What one runner pass writes, in its transaction."""

    actions: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


ActionMaker = Any  # Campaigns.journey_action: (trigger, state, occasion, run, now) -> row


def advance(
    run: Run,
    journey: CompiledJourney,
    state: CustomerState,
    now: datetime,
    out: Pass,
    act: ActionMaker,
    default_timezone: str,
) -> None:
    """Move a due run through its steps until it waits or ends."""
    late = max(0.0, (now - run.due_at).total_seconds()) if run.due_at else 0.0
    occasion = occasion_of(run.occasion) or Occasion("", "", "", run.cause_time, {})
    while run.status in repository.OPEN_RUN and run.step_id is not None:
        step = journey.steps[run.step_id]
        resuming = run.status == "waiting"
        if not resuming and _exits(journey, state, occasion):
            finish(run, "exited", now, reason="exit_condition")
            return
        ran = _step(run, journey, step, state, occasion, now, resuming, act, default_timezone)
        if ran is None:  # waiting now
            return
        outcome, target, row = ran
        if row is not None:
            out.actions.append(row)
        out.steps.append(
            {
                "run_id": run.id,
                "step_id": step.id,
                "journey_id": journey.id,
                "at": now,
                "late_seconds": late,
                "outcome": outcome,
                "arm": run.arm,
                "action_id": row["id"] if row is not None else None,
            }
        )
        late = 0.0  # only the step that was due can be late
        nxt = None if target is _END else journey.after(step.id, target)
        if nxt is None:
            finish(run, "exited" if run.exit_reason else "completed", now, reason=run.exit_reason)
        else:
            run.step_id, run.status, run.due_at = nxt, "active", now


_END = "\x00end"  # a step's target meaning: the run ends here


def _exits(journey: CompiledJourney, state: CustomerState, occasion: Occasion) -> bool:
    condition = journey.exit_condition
    return condition is not None and condition.matches(
        condition_context(state, occasion, condition.reads)
    )


def _step(
    run: Run,
    journey: CompiledJourney,
    step: Any,
    state: CustomerState,
    occasion: Occasion,
    now: datetime,
    resuming: bool,
    act: ActionMaker,
    default_timezone: str,
) -> tuple[str, str | None, dict[str, Any] | None] | None:
    """Run one step: (outcome, where to go (None: the following step), its action), or
    None when the run waits now (its due time set)."""
    # Waits count from when the run reached the step in event time (`step_at`), so a pass
    # that runs late, or events that arrive late, do not move them.
    if isinstance(step, WaitStep):
        if not resuming:
            run.status = "waiting"
            run.due_at = wait_until(step, run.step_at, state.timezone, default_timezone)
            return None
        assert run.due_at is not None
        run.step_at = run.due_at  # the next step starts when the wait was to end
        return "waited", step.next, None
    if isinstance(step, WaitForStep):
        came = _came(step, run)
        if not resuming and not came:
            run.status = "waiting"
            run.due_at = run.step_at + timedelta(seconds=step.timeout_seconds)
            return None
        if not came:
            run.step_at = run.step_at + timedelta(seconds=step.timeout_seconds)
        return ("event", step.on_event, None) if came else ("timeout", step.on_timeout, None)
    if isinstance(step, SendStep):
        row = act(journey.sends[step.id], state, occasion, run, now)
        outcome = "sent" if row["status"] == "pending" else row["suppressed_reason"]
        return str(outcome or row["status"]), step.next, row
    if isinstance(step, BranchStep):
        condition = journey.branches[step.id]
        yes = condition.matches(condition_context(state, occasion, condition.reads))
        return ("then", step.then, None) if yes else ("else", step.otherwise, None)
    if isinstance(step, SplitStep):
        arm = arm_of(journey.id, state.customer_id, step)
        run.arm = arm.name
        if arm.holdout:
            run.exit_reason = "holdout"
            return f"arm:{arm.name}", _END, None
        return f"arm:{arm.name}", arm.next, None
    assert isinstance(step, ExitStep)
    return "exit", _END, None


class JourneyRunner:
    """Claims due runs (FOR UPDATE SKIP LOCKED: replicas share them) and advances them,
    one transaction per page of runs."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cache: JourneyCache,
        campaigns: Any,  # handlers.Campaigns: the action rules of triggers
        clock: Clock,
        *,
        page: int = 500,
        poll_interval: float = 0.5,
    ) -> None:
        self.sessions, self.cache, self.campaigns, self.clock = sessions, cache, campaigns, clock
        self.page, self.poll_interval = page, poll_interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            full = False
            try:
                await self.clock.sync(self.sessions)
                full = await self.pass_once() == self.page
            except Exception:
                log.exception("journey pass failed; retrying")
            if full:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def pass_once(self) -> int:
        """One page of due runs; how many were claimed."""
        now = self.clock.now()
        async with self.sessions() as session, session.begin():
            runs, states = await repository.claim_due_runs(session, now, self.page)
            if not runs:
                return 0
            journeys = await self.cache.versions(
                session, {(r.journey_id, r.journey_version) for r in runs}
            )
            sends = [t for j, _ in journeys.values() for t in j.sends.values()]
            contacts = await repository.recent_contacts(
                session, sorted(states), now - self.campaigns.lookback(sends)
            )
            out = Pass()
            for run in runs:
                found = journeys.get((run.journey_id, run.journey_version))
                if found is None or not found[1]:
                    finish(run, "exited", now, reason="journey_disabled")
                    continue
                advance(
                    run,
                    found[0],
                    states[run.customer_id],
                    now,
                    out,
                    lambda t, s, o, r, n: self.campaigns.journey_action(t, s, o, r, n, contacts),
                    self.campaigns.default_timezone,
                )
            await repository.insert_actions(session, out.actions)
            await repository.insert_steps(session, out.steps)
            await repository.save_runs(session, runs)
            await self.campaigns.announce(session, out.actions)
            self.campaigns.after_commit(session, out.actions)
            sa.event.listen(
                session.sync_session, "after_commit", lambda _s: _count(out, runs), once=True
            )
        return len(runs)


def _count(out: Pass, runs: Sequence[Run]) -> None:
    """Counted once the pass is durable."""
    for r in out.steps:
        metrics.JOURNEY_STEPS.labels(r["journey_id"], r["outcome"].split(":")[0]).inc()
        if r["late_seconds"]:
            metrics.JOURNEY_LATENESS.observe(r["late_seconds"])
    for run in runs:
        if run.status not in repository.OPEN_RUN:
            metrics.JOURNEY_RUNS.labels(run.journey_id, run.status).inc()
