"""Does a trigger fire for this occasion, and what exactly would it send."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from clm_campaigns.domain.projection import CustomerState, Occasion
from clm_campaigns.domain.triggers import (
    CompiledTrigger,
    EmailAction,
    KafkaAction,
    OnEvent,
    OnScore,
    OnSegment,
    OnTransition,
    WebhookAction,
)

Missing = Literal["empty", "suppress"]


# The occasions a membership change is, as triggers match them (not catalog events: they
# happen inside campaigns, in the transaction that changes the membership).
SEGMENT_OCCASIONS = {"entered_segment": "segment.entered", "left_segment": "segment.left"}


def fires_on(trigger: CompiledTrigger, occasion: Occasion) -> bool:
    on = trigger.definition.on
    if isinstance(on, OnTransition):
        if occasion.event_type != "lifecycle.stage_changed" or occasion.to_stage != on.to_stage:
            return False
        return on.from_stages is None or occasion.from_stage in on.from_stages
    if isinstance(on, OnEvent):
        return occasion.event_type == on.event_type
    if isinstance(on, OnSegment):
        return (
            occasion.event_type == SEGMENT_OCCASIONS[on.kind]
            and occasion.data.get("segment_id") == on.segment_id
        )
    if isinstance(on, OnScore):
        if occasion.event_type != "lifecycle.score_updated":
            return False
        return crossed(
            on, (occasion.previous_scores or {}).get(on.score), occasion.data.get(on.score)
        )
    return False


def entry_key(trigger: CompiledTrigger, occasion: Occasion) -> str:
    """Which customer entry an occasion is, for re-entry control: the n-th stay in the
    trigger's stage for a transition (the same for a transition a replay re-created),
    the causing event otherwise."""
    if isinstance(trigger.definition.on, OnTransition) and occasion.entry is not None:
        return f"{occasion.to_stage}#{occasion.entry}"
    if occasion.transition_id is not None:
        return f"transition:{occasion.transition_id}"
    return f"event:{occasion.event_source}/{occasion.event_id}"


def _number(value: Any) -> float | None:
    # CLV travels as a decimal string ("1822.50"), the probabilities as numbers.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def crossed(on: OnScore, before: Any, after: Any) -> bool:
    """A crossing: the new score is past the threshold and the previous one was not (a
    customer scored for the first time crosses if the first score is past it)."""
    after, prior = _number(after), _number(before)
    if after is None:
        return False
    if on.direction == "above":
        return after >= on.threshold and (prior is None or prior < on.threshold)
    return after <= on.threshold and (prior is None or prior > on.threshold)


def still_sendable(
    trigger: CompiledTrigger,
    *,
    enabled: bool,
    state: CustomerState | None,
    occasion: Occasion | None,
    member: bool | None = None,
) -> str | None:
    """The send-time re-check (exit criteria): why an action decided earlier must not go
    out now, or None. Retractions are applied when they arrive (the consumer suppresses
    the pending actions of a retracted transition)."""
    if not enabled:
        return "trigger_disabled"
    recheck, on = trigger.definition.recheck, trigger.definition.on
    if (
        recheck.stage
        and isinstance(on, OnTransition)
        and (state is None or state.stage != on.to_stage)
    ):
        return "left_stage"
    if recheck.segment and isinstance(on, OnSegment) and member is not None:
        if on.kind == "entered_segment" and not member:
            return "left_segment"
        if on.kind == "left_segment" and member:
            return "back_in_segment"
    if recheck.condition and trigger.definition.condition.strip() != "true":
        if state is None or not trigger.condition.matches(
            condition_context(state, occasion or _NO_EVENT, trigger.condition.reads)
        ):
            return "condition_no_longer_holds"
    return None


def rechecks_membership(trigger: CompiledTrigger) -> str | None:
    """The segment whose membership the send-time re-check reads, if any."""
    on, recheck = trigger.definition.on, trigger.definition.recheck
    return on.segment_id if isinstance(on, OnSegment) and recheck.segment else None


def needs_state(trigger: CompiledTrigger) -> bool:
    """Whether the send-time re-check reads the customer's current state."""
    recheck = trigger.definition.recheck
    return (recheck.stage and isinstance(trigger.definition.on, OnTransition)) or (
        recheck.condition and trigger.definition.condition.strip() != "true"
    )


def occasion_of(context: dict[str, Any] | None) -> Occasion | None:
    """The causing event as an action kept it (`Occasion.as_context`)."""
    if not context:
        return None
    return Occasion(
        event_id=str(context.get("id")),
        event_source=str(context.get("source")),
        event_type=str(context.get("type")),
        time=datetime.fromisoformat(str(context.get("time"))),
        data=dict(context.get("data") or {}),
    )


_NO_EVENT = Occasion("", "", "", datetime.min.replace(tzinfo=UTC), {})
NO_EVENT = _NO_EVENT  # what a segment, which sees no event, is evaluated with


def condition_context(
    state: CustomerState, occasion: Occasion, reads: Iterable[str] | None = None
) -> dict[str, Any]:
    """The variables a condition sees; with `reads`, only those (building the others for
    every evaluated trigger was wasted work)."""
    build: dict[str, Callable[[], Any]] = {
        "facts": state.all_facts,
        "stage": lambda: state.stage,
        "scores": lambda: dict(state.scores),
        "event": occasion.as_context,
        "traits": lambda: dict(state.traits),
    }
    return {name: build[name]() for name in (build if reads is None else reads)}


def template_context(
    trigger: CompiledTrigger, state: CustomerState, occasion: Occasion | None, action_id: str
) -> dict[str, Any]:
    return {
        "customer": state.as_template(),
        "trigger": {
            "id": trigger.id,
            "name": trigger.definition.name,
            "version": trigger.version,
        },
        "event": occasion.as_context() if occasion is not None else {},
        "action": {"id": action_id, "channel": trigger.channel},
    }


@dataclass(frozen=True)
class Rendered:
    """A rendered action: where it goes (no secrets) and its body."""

    target: dict[str, Any]
    payload: str


def render(
    trigger: CompiledTrigger, context: dict[str, Any], *, missing: Missing = "empty"
) -> Rendered:
    """Raises TemplateProblem when a template fails (a missing value with `missing`
    "suppress", a limit, a sandbox refusal)."""
    action = trigger.definition.action
    t = trigger.templates

    def text(name: str) -> str:
        return t[name].render(context, missing=missing)

    if isinstance(action, WebhookAction):
        return Rendered(
            {"url": action.url, "headers": action.headers, "content_type": action.content_type},
            text("payload"),
        )
    if isinstance(action, EmailAction):
        return Rendered({"to": text("to").strip(), "subject": text("subject")}, text("body"))
    assert isinstance(action, KafkaAction)
    return Rendered({"topic": action.topic}, text("payload"))


def preview_json(rendered: Rendered) -> Any:
    """The payload as JSON when it is JSON (what a preview shows), else the text."""
    try:
        return json.loads(rendered.payload)
    except ValueError:
        return rendered.payload
