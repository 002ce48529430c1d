"""What the campaigns service does with each consumed batch: keep the customer projection,
match triggers, and record each matching action (or why it is not sent) in the batch's
transaction. Sending is the dispatcher's job; no Kafka and no commit() here."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from clm_campaigns import metrics, repository
from clm_campaigns.domain import projection
from clm_campaigns.domain.evaluate import condition_context, fires_on, render, template_context
from clm_campaigns.domain.policy import GlobalCap, PastContact, decide
from clm_campaigns.domain.projection import CustomerState, Occasion
from clm_campaigns.domain.templates import TemplateProblem
from clm_campaigns.domain.triggers import CompiledTrigger, TriggerDefinition, compile_trigger
from clm_campaigns.models import outbox
from clm_events.consumer import Delivery
from clm_events.envelope import new_event
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
                    trigger_id, version, TriggerDefinition.model_validate(definition)
                )
            out.append(self._compiled[key])
        live = {(t.id, t.version) for t in out}
        for key in [k for k in self._compiled if k not in live]:
            del self._compiled[key]
        return out


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
class Campaigns:
    """The consumer handler (a callable the runner gives each batch and its session)."""

    triggers: TriggerCache
    actions_topic: str
    global_cap: GlobalCap
    default_timezone: str
    on_commit: Callable[[], None] | None = None

    async def __call__(self, session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        now = datetime.now(UTC)
        compiled = await self.triggers.enabled(session)
        ids = sorted({d.event.subject for d in deliveries})
        states = await repository.load_customers(session, ids)
        contacts: dict[str, list[PastContact]] = {}
        if compiled:
            contacts = await repository.recent_contacts(
                session, ids, now - self._lookback(compiled)
            )
        rows: list[dict[str, Any]] = []
        purchases: list[tuple[str, datetime]] = []
        for d in deliveries:
            e = d.event
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
                purchases.append((e.subject, e.time))
            for trigger in compiled:
                if fires_on(trigger, occasion) and trigger.condition.matches(
                    condition_context(state, occasion, trigger.condition.reads)
                ):
                    row = self._action(trigger, state, occasion, contacts, now)
                    rows.append(row)
        await repository.save_customers(session, states.values())
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
        await repository.record_conversions(session, purchases)
        self._after_commit(session, rows)

    def _lookback(self, compiled: list[CompiledTrigger]) -> timedelta:
        longest = max(
            [
                self.global_cap.period.total_seconds(),
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
        now: datetime,
    ) -> dict[str, Any]:
        mine = contacts.setdefault(state.customer_id, [])
        decision = decide(
            trigger_id=trigger.id,
            definition=trigger.definition,
            customer_id=state.customer_id,
            contacts=mine,
            now=now,
            timezone=state.timezone,
            global_cap=self.global_cap,
            default_timezone=self.default_timezone,
        )
        action_id = new_action_id()
        row: dict[str, Any] = {
            "id": action_id,
            "trigger_id": trigger.id,
            "trigger_version": trigger.version,
            "customer_id": state.customer_id,
            "channel": trigger.channel,
            "status": decision.status,
            "suppressed_reason": decision.suppressed_reason,
            "deferred_reason": decision.deferred_reason,
            "target": {},
            "payload": None,
            "cause_event": f"{occasion.event_source}/{occasion.event_id}",
            "cause_time": occasion.time,
            "created_at": now,
            "due_at": decision.due_at,
            "attempts": 0,
            "last_error": None,
            "delivered_at": None,
            "conversion_window_seconds": trigger.definition.conversion_window_seconds,
            "converted_at": None,
        }
        if decision.status != "pending":
            return row
        # Rendered now, with the projection as of this event: a delayed or held action
        # sends what was true when it fired, and a re-send sends the same bytes.
        try:
            rendered = render(trigger, template_context(trigger, state, occasion, action_id))
        except TemplateProblem as exc:
            row.update(status="failed", last_error=str(exc))
            return row
        row.update(target=rendered.target, payload=rendered.payload)
        mine.append(PastContact(trigger.id, now))  # later matches in this batch see it
        return row

    def _after_commit(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        counts = Counter((r["trigger_id"], r["channel"], r["status"]) for r in rows)
        suppressed = Counter(r["suppressed_reason"] for r in rows if r["suppressed_reason"])
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
            if wake is not None and rows:
                wake()

        sa.event.listen(session.sync_session, "after_commit", committed, once=True)
