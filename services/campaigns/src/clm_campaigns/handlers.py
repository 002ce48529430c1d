"""What the campaigns service does with each consumed batch: keep the customer projection,
match triggers, and record each matching action (or why it is not sent) in the batch's
transaction. Sending is the dispatcher's job; no Kafka and no commit() here."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from clm_campaigns import metrics, repository, segments
from clm_campaigns.clock import Clock
from clm_campaigns.domain import projection
from clm_campaigns.domain.evaluate import (
    SEGMENT_OCCASIONS,
    condition_context,
    entry_key,
    fires_on,
    render,
    template_context,
)
from clm_campaigns.domain.journeys import CompiledJourney
from clm_campaigns.domain.policy import GlobalCap, PastContact, decide
from clm_campaigns.domain.projection import CustomerState, Occasion
from clm_campaigns.domain.segments import Inputs
from clm_campaigns.domain.templates import TemplateProblem
from clm_campaigns.domain.triggers import (
    STORED,
    CompiledTrigger,
    OnSegment,
    OnTransition,
    TriggerDefinition,
    compile_trigger,
)
from clm_campaigns.journeys import JourneyCache, on_events, start
from clm_campaigns.models import outbox
from clm_campaigns.repository import Entry, Stay
from clm_campaigns.segments import Change
from clm_events.catalog import LifecycleCustomersMerged, LifecycleTransitionRetracted
from clm_events.consumer import Delivery
from clm_events.envelope import Event, new_event
from clm_events.outbox import add_events

SOURCE = "clm/campaigns"


class TriggerCache:
    """Enabled triggers, read each batch (cheap) and compiled once per version."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, int], CompiledTrigger] = {}

    async def enabled(self, session: AsyncSession) -> list[CompiledTrigger]:
        out = []
        for trigger_id, version, definition in await repository.enabled_triggers(session):
            key = (trigger_id, version)
            if key not in self._compiled:
                self._compiled[key] = compile_trigger(
                    trigger_id,
                    version,
                    TriggerDefinition.model_validate(definition, context=STORED),
                )
            out.append(self._compiled[key])
        live = {(t.id, t.version) for t in out}
        for key in [k for k in self._compiled if k not in live]:
            del self._compiled[key]
        return out


def segment_occasion(change: segments.Change, time: datetime) -> Occasion:
    """Entering or leaving a segment as triggers match it; `time` is the latest event of
    the customer in the batch (what caused it, for the maximum age)."""
    stay = change.stay
    kind = "entered_segment" if change.entered else "left_segment"
    return Occasion(
        event_id=f"{kind}:{stay.segment_id}:{stay.since.isoformat()}",
        event_source=SOURCE,
        event_type=SEGMENT_OCCASIONS[kind],
        time=time,
        data={"segment_id": stay.segment_id, "since": stay.since.isoformat()},
    )


def settled_history_reason(
    trigger_id: str,
    definition: TriggerDefinition,
    occasion: Occasion,
    entry: str,
    acted: Sequence[Entry],
    now: datetime,
) -> str | None:
    """Why an action for this occasion must not be sent whatever its caps say: a backfill
    that was not asked to send, an occasion older than the trigger's maximum age, or an
    entry the trigger already acted on (or may not act on again)."""
    if occasion.backfill and not occasion.send_actions:
        return "backfill"
    age = definition.max_age_seconds
    if age is not None and now - occasion.time > timedelta(seconds=age):
        return "stale"
    mine = [a for a in acted if a.trigger_id == trigger_id]
    if any(a.key == entry for a in mine):
        return "duplicate_entry"
    reentry = definition.reentry
    if reentry.mode == "once" and mine:
        return "reentry"
    if reentry.mode == "once_per" and reentry.period_seconds is not None:
        period = timedelta(seconds=reentry.period_seconds)
        if any(abs(a.cause_time - occasion.time) < period for a in mine):
            return "reentry"
    return None


def _retractions(deliveries: Sequence[Delivery]) -> list[str]:
    """The causes (`<source>/<transition id>`) of the transitions a batch retracts."""
    return [
        f"{d.event.source}/{d.event.data.transition_id}"
        for d in deliveries
        if isinstance(d.event.data, LifecycleTransitionRetracted)
    ]


def _retract(
    cause: str,
    rows: list[dict[str, Any]],
    acted: list[Entry],
    triggers: dict[str, CompiledTrigger],
) -> None:
    """A transition was retracted: this batch's pending actions for it are suppressed, and
    its pending entries stop counting, so what replaces it may act on the same entry. An
    entry already sent (or being sent) keeps counting: the customer has the message."""

    def rechecks(trigger_id: str) -> bool:
        trigger = triggers.get(trigger_id)
        return trigger is None or trigger.definition.recheck.transition

    for r in rows:
        if r["cause_event"] == cause and r["status"] == "pending" and rechecks(r["trigger_id"]):
            r.update(status="suppressed", suppressed_reason="retracted")
    acted[:] = [
        a
        for a in acted
        if not (a.cause == cause and a.status == "pending" and rechecks(a.trigger_id))
    ]


def _enrolled_in_stage(trigger: CompiledTrigger, state: CustomerState, now: datetime) -> Occasion:
    """A customer already in a transition trigger's stage, as the entry they are in."""
    return Occasion(
        event_id=state.stage_transition or f"enrolled-{trigger.id}",
        event_source="clm/stage-engine",
        event_type="lifecycle.stage_changed",
        time=now,  # enrolled now: not stale, whenever they entered the stage
        data={"to_stage": state.stage, "cause": "enrolled"},
        to_stage=state.stage,
        transition_id=state.stage_transition,
        entry=state.stage_entry,
    )


def _merges(deliveries: Sequence[Delivery]) -> list[tuple[str, str]]:
    """(customer, anonymous id) of the identity merges a batch announces."""
    return [
        (d.event.subject, d.event.data.anonymous_id)
        for d in deliveries
        if isinstance(d.event.data, LifecycleCustomersMerged)
    ]


def _merge_batch(
    known: str,
    anonymous: str,
    rows: list[dict[str, Any]],
    contacts: dict[str, list[PastContact]],
    acted: dict[str, list[Entry]],
    triggers: dict[str, CompiledTrigger],
) -> None:
    """What this batch recorded for the anonymous id before its merge becomes the
    customer's, as the repository does for earlier batches: its pending actions of
    transitions are retracted, the rest count for the customer."""

    def retracted(trigger_id: str, entry: str | None, status: str) -> bool:
        trigger = triggers.get(trigger_id)
        rechecks = trigger is None or trigger.definition.recheck.transition
        of_transition = not (entry or "event:").startswith("event:")
        return status == "pending" and of_transition and rechecks

    past = contacts.pop(anonymous, [])
    for r in rows:
        if r["customer_id"] == anonymous:
            r["customer_id"] = known
            if retracted(r["trigger_id"], r["entry_key"], r["status"]):
                r.update(status="suppressed", suppressed_reason="retracted")
                # No longer a contact (_action counted it as one while it was pending).
                sent = PastContact(
                    r["trigger_id"], r["created_at"], r["channel"], r["transactional"]
                )
                if sent in past:
                    past.remove(sent)
    contacts.setdefault(known, []).extend(past)
    moved = [a for a in acted.pop(anonymous, []) if not retracted(a.trigger_id, a.key, a.status)]
    acted.setdefault(known, []).extend(moved)


def new_action_id() -> str:
    return f"act_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Fired:
    """An action's final status, to announce."""

    action_id: str
    customer_id: str
    trigger_id: str
    channel: str
    status: str


async def actions_fired(session: AsyncSession, topic: str, fired: Sequence[Fired]) -> None:
    """Announce actions' final statuses on the actions topic, through the outbox in one
    statement (one event per action: its id is the action id, so consumers can dedupe)."""
    await add_events(
        session,
        outbox,
        topic,
        [
            new_event(
                "campaign.action_fired",
                id=f.action_id,
                source=SOURCE,
                subject=f.customer_id,
                data={
                    "trigger_id": f.trigger_id,
                    "action_id": f.action_id,
                    "channel": f.channel,
                    "status": f.status,
                },
            )
            for f in fired
        ],
    )


@dataclass
class Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)  # actions, as repository rows
    purchases: list[tuple[str, datetime]] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)  # causes it retracted, in order
    merged: list[str] = field(default_factory=list)  # anonymous ids merged into customers
    occasions: list[tuple[CustomerState, Occasion]] = field(default_factory=list)  # journeys


@dataclass
class Campaigns:
    """The consumer handler (a callable the runner gives each batch and its session)."""

    triggers: TriggerCache
    actions_topic: str
    global_cap: GlobalCap
    default_timezone: str
    on_commit: Callable[[], None] | None = None
    segments: segments.SegmentCache = field(default_factory=segments.SegmentCache)
    journeys: JourneyCache = field(default_factory=JourneyCache)
    clock: Clock = field(default_factory=Clock)
    on_journeys: Callable[[], None] | None = None  # wakes the journey runner

    async def __call__(self, session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        now = self.clock.now()
        compiled = await self.triggers.enabled(session)
        ids = sorted({d.event.subject for d in deliveries})
        merges = _merges(deliveries)
        states = await repository.load_customers(session, sorted({*ids, *(a for _, a in merges)}))
        before = {c: Inputs.of(s) for c, s in states.items()}  # what segments may have to redo
        # Earlier batches' pending actions of transitions this batch retracts (or of
        # anonymous ids it merges) are suppressed first, and only then are the entries
        # read: an action the dispatcher claimed meanwhile is not suppressed, so it must
        # count as the entry's message. A merged anonymous id's actions are read as the
        # customer's.
        keep = [t.id for t in compiled if not t.definition.recheck.transition]
        gone = await repository.suppress_retracted(session, _retractions(deliveries), keep)
        gone += await repository.merge_identities(session, merges, keep)
        contacts: dict[str, list[PastContact]] = {}
        acted: dict[str, list[Entry]] = {}
        if compiled:
            contacts = await repository.recent_contacts(session, ids, now - self.lookback(compiled))
            acted = await repository.entries(session, ids, [t.id for t in compiled])
        batch = self.decide([d.event for d in deliveries], states, compiled, contacts, acted, now)
        # Their segment membership, now and in this transaction (exactly once with it),
        # and the actions of triggers on entering or leaving a segment.
        plan = await segments.evaluate(session, self.segments, states.values(), before)
        await repository.save_customers(session, states.values())
        changes = await segments.write(session, plan)
        on_segments = [t for t in compiled if isinstance(t.definition.on, OnSegment)]
        journeyed = await self.journeys.enabled(session)
        latest: dict[str, datetime] = {}
        for e in (d.event for d in deliveries if (on_segments or journeyed) and changes):
            latest[e.subject] = max(e.time, latest.get(e.subject, e.time))
        for change in changes if (on_segments or journeyed) else ():
            occasion = segment_occasion(change, latest.get(change.stay.customer_id, now))
            state = states[change.stay.customer_id]
            batch.occasions.append((state, occasion))
            for trigger in on_segments:
                if fires_on(trigger, occasion) and trigger.condition.matches(
                    condition_context(state, occasion, trigger.condition.reads)
                ):
                    batch.rows.append(self._action(trigger, state, occasion, contacts, acted, now))
        await repository.insert_actions(session, batch.rows)
        await actions_fired(
            session,
            self.actions_topic,
            [
                Fired(r["id"], r["customer_id"], r["trigger_id"], r["channel"], r["status"])
                for r in batch.rows
                if r["status"] != "pending"
            ]
            + [Fired(g.id, g.customer_id, g.trigger_id, g.channel, "suppressed") for g in gone],
        )
        await repository.record_conversions(session, batch.purchases)
        if journeyed:
            # An anonymous id merged away in this batch has no row to start a run on.
            batch.occasions = [(s, o) for s, o in batch.occasions if s.customer_id in states]
            await self._journeys(session, journeyed, batch, [d.event for d in deliveries], now)
        self._after_commit(session, batch.rows, retracted=len(gone), merged=len(batch.merged))

    async def _journeys(
        self,
        session: AsyncSession,
        enabled: list[CompiledJourney],
        batch: Batch,
        events: list[Event],
        now: datetime,
    ) -> None:
        """The batch's occasions start runs (its customers are saved: a run needs its
        customer); its events end or wake runs under way, and convert them."""
        ids = sorted({s.customer_id for s, _ in batch.occasions})
        earlier = await repository.journey_entries(session, ids, [j.id for j in enabled])
        started = start(enabled, batch.occasions, earlier, now)
        new = await repository.insert_runs(session, started.runs)
        await repository.save_decisions(session, started.decisions)
        watched = {t.value for j in enabled for t in [*j.definition.exit.events, *j.waits_for]}
        woken: list[repository.Run] = []
        if any(e.type in watched for e in events):
            subjects = sorted({e.subject for e in events if e.type in watched})
            runs = await repository.open_runs(session, subjects, [j.id for j in enabled])
            found = await self.journeys.versions(
                session, {(r.journey_id, r.journey_version) for r in runs}
            )
            woken = on_events(runs, found, events, now)
            await repository.save_runs(session, woken)
        await repository.record_journey_conversions(
            session,
            [
                (j.id, e.subject, e.time, j.definition.conversion_window_seconds)
                for e in events
                for j in enabled
                if e.type == j.definition.conversion_event
            ],
        )
        wake = self.on_journeys
        if wake is not None and (new or woken):
            sa.event.listen(session.sync_session, "after_commit", lambda _s: wake(), once=True)

    def journey_action(
        self,
        trigger: CompiledTrigger,
        state: CustomerState,
        occasion: Occasion,
        run: repository.Run,
        now: datetime,
        contacts: dict[str, list[PastContact]],
    ) -> dict[str, Any]:
        """A journey's send step, as a trigger's action (caps, quiet hours, template), for
        the run's entry: its cause is the run's (a retracted entry suppresses it)."""
        row = self._action(trigger, state, occasion, contacts, {}, now)
        row.update(
            entry_key=f"run:{run.id}", cause_event=run.cause_event, cause_time=run.cause_time
        )
        return row

    async def announce(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Actions recorded already final (suppressed, held out, failed) are announced."""
        await actions_fired(
            session,
            self.actions_topic,
            [
                Fired(r["id"], r["customer_id"], r["trigger_id"], r["channel"], r["status"])
                for r in rows
                if r["status"] != "pending"
            ],
        )

    def after_commit(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        self._after_commit(session, rows)

    def decide(
        self,
        events: Sequence[Event],
        states: dict[str, CustomerState],
        compiled: list[CompiledTrigger],
        contacts: dict[str, list[PastContact]],
        acted: dict[str, list[Entry]],
        now: datetime,
    ) -> Batch:
        """A batch in order, with no I/O: the projection (`states`, updated in place), the
        actions the triggers record, and the transitions retracted meanwhile (whose pending
        actions from earlier batches are to be suppressed)."""
        by_id = {t.id: t for t in compiled}
        batch = Batch()
        for e in events:
            state = states.setdefault(e.subject, CustomerState(e.subject))
            occasion = projection.apply(
                state,
                event_id=e.id,
                source=e.source,
                event_type=e.type,
                time=e.time,
                data=e.data.model_dump(mode="json"),
            )
            if e.type == "purchase.completed":
                batch.purchases.append((e.subject, e.time))
            if isinstance(e.data, LifecycleCustomersMerged):
                anonymous = e.data.anonymous_id
                if anonymous in states:
                    projection.merge(state, states.pop(anonymous))
                _merge_batch(e.subject, anonymous, batch.rows, contacts, acted, by_id)
                batch.merged.append(anonymous)
            if e.type == "lifecycle.transition_retracted" and occasion.transition_id:
                cause = f"{e.source}/{occasion.transition_id}"
                batch.retracted.append(cause)
                _retract(cause, batch.rows, acted.get(e.subject, []), by_id)
            for trigger in compiled:
                if fires_on(trigger, occasion) and trigger.condition.matches(
                    condition_context(state, occasion, trigger.condition.reads)
                ):
                    batch.rows.append(self._action(trigger, state, occasion, contacts, acted, now))
            batch.occasions.append((state, occasion))
        return batch

    async def enroll(
        self, session: AsyncSession, trigger: CompiledTrigger, *, after: str, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Act on customers who already are in a transition trigger's stage (or an
        entered_segment trigger's segment), as if they had just entered it: the same
        entry (a later re-entry rule, a real transition of that entry, or a second
        enrolment are deduplicated against it), condition, caps, holdout and schedule.
        One page of customers by id; returns the actions and where the next page starts
        (None: done)."""
        on = trigger.definition.on
        now = self.clock.now()
        found: list[tuple[CustomerState, Occasion]]
        if isinstance(on, OnSegment):  # its members, each stay an entry
            members = await repository.customers_in_segment(session, on.segment_id, after, limit)
            found = [
                (s, segment_occasion(Change(Stay(on.segment_id, s.customer_id, since), True), now))
                for s, since in members
            ]
        else:
            assert isinstance(on, OnTransition)
            in_stage = await repository.customers_in_stage(session, on.to_stage.value, after, limit)
            found = [(s, _enrolled_in_stage(trigger, s, now)) for s in in_stage]
        ids = [s.customer_id for s, _ in found]
        contacts = await repository.recent_contacts(session, ids, now - self.lookback([trigger]))
        acted = await repository.entries(session, ids, [trigger.id])
        rows = []
        for state, occasion in found:
            if trigger.condition.matches(
                condition_context(state, occasion, trigger.condition.reads)
            ):
                rows.append(self._action(trigger, state, occasion, contacts, acted, now))
        await repository.insert_actions(session, rows)
        await actions_fired(
            session,
            self.actions_topic,
            [
                Fired(r["id"], r["customer_id"], r["trigger_id"], r["channel"], r["status"])
                for r in rows
                if r["status"] != "pending"
            ],
        )
        self._after_commit(session, rows)
        return rows, (ids[-1] if len(ids) == limit else None)

    def lookback(self, compiled: list[CompiledTrigger]) -> timedelta:
        longest = max(
            [
                self.global_cap.longest.total_seconds(),
                *(t.definition.cooldown_seconds for t in compiled),
                *(
                    t.definition.frequency_cap.period_seconds
                    for t in compiled
                    if t.definition.frequency_cap is not None
                ),
            ]
        )
        return timedelta(seconds=longest)

    def _action(
        self,
        trigger: CompiledTrigger,
        state: CustomerState,
        occasion: Occasion,
        contacts: dict[str, list[PastContact]],
        acted: dict[str, list[Entry]],
        now: datetime,
    ) -> dict[str, Any]:
        definition = trigger.definition
        cause = f"{occasion.event_source}/{occasion.transition_id or occasion.event_id}"
        entry = entry_key(trigger, occasion)
        row: dict[str, Any] = {
            "id": new_action_id(),
            "trigger_id": trigger.id,
            "trigger_version": trigger.version,
            "customer_id": state.customer_id,
            "channel": trigger.channel,
            "status": "suppressed",
            "suppressed_reason": None,
            "deferred_reason": None,
            "target": {},
            "payload": None,
            "cause_event": cause,
            "cause_time": occasion.time,
            "created_at": now,
            "due_at": now,
            "attempts": 0,
            "last_error": None,
            "delivered_at": None,
            "conversion_window_seconds": definition.conversion_window_seconds,
            "converted_at": None,
            "entry_key": entry,
            # Kept for the send-time re-check when the condition reads the event.
            "occasion": occasion.as_context() if "event" in trigger.condition.reads else None,
            "transactional": definition.transactional,
        }
        mine = acted.setdefault(state.customer_id, [])
        settled = settled_history_reason(trigger.id, definition, occasion, entry, mine, now)
        if settled is not None:
            row["suppressed_reason"] = settled
            return row
        decision = decide(
            trigger_id=trigger.id,
            definition=definition,
            customer_id=state.customer_id,
            contacts=contacts.setdefault(state.customer_id, []),
            now=now,
            timezone=state.timezone,
            global_cap=self.global_cap,
            default_timezone=self.default_timezone,
        )
        row.update(
            status=decision.status,
            suppressed_reason=decision.suppressed_reason,
            deferred_reason=decision.deferred_reason,
            due_at=decision.due_at,
        )
        if decision.status == "held_out":
            mine.append(Entry(trigger.id, entry, occasion.time, cause, "held_out"))
        if decision.status != "pending":
            return row
        # Rendered now, with the projection as of this event: a delayed or held action
        # sends what was true when it fired, and a re-send sends the same bytes.
        context = template_context(trigger, state, occasion, row["id"])
        try:
            rendered = render(trigger, context, missing=definition.missing_variables)
        except TemplateProblem as exc:
            if exc.kind in ("missing_variable", "limit"):
                reason = "missing_variable" if exc.kind == "missing_variable" else "template_limit"
                row.update(status="suppressed", suppressed_reason=reason, last_error=str(exc))
            else:
                row.update(status="failed", last_error=str(exc))
            return row
        row.update(target=rendered.target, payload=rendered.payload)
        # Later matches see it.
        contacts[state.customer_id].append(
            PastContact(trigger.id, now, trigger.channel, definition.transactional)
        )
        mine.append(Entry(trigger.id, entry, occasion.time, cause, "pending"))
        return row

    def _after_commit(
        self,
        session: AsyncSession,
        rows: list[dict[str, Any]],
        *,
        retracted: int = 0,
        merged: int = 0,
    ) -> None:
        counts = Counter((r["trigger_id"], r["channel"], r["status"]) for r in rows)
        suppressed = Counter(r["suppressed_reason"] for r in rows if r["suppressed_reason"])
        if retracted:
            suppressed["retracted"] += retracted
        deferred = Counter(r["deferred_reason"] for r in rows if r["deferred_reason"])
        wake = self.on_commit

        def committed(_session: Any) -> None:
            # Counted (and the dispatcher woken) only once the actions are durable.
            for (trigger, channel, status), n in counts.items():
                metrics.ACTIONS.labels(trigger, channel, status).inc(n)
            for reason, n in suppressed.items():
                metrics.SUPPRESSIONS.labels(reason).inc(n)
            for reason, n in deferred.items():
                metrics.DEFERRALS.labels(reason).inc(n)
            metrics.IDENTITY_MERGES.inc(merged)
            if wake is not None and rows:
                wake()

        sa.event.listen(session.sync_session, "after_commit", committed, once=True)
