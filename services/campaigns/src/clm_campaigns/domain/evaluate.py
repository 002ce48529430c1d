"""Does a trigger fire for this occasion, and what exactly would it send."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from clm_campaigns.domain.projection import CustomerState, Occasion
from clm_campaigns.domain.triggers import (
    CompiledTrigger,
    EmailAction,
    KafkaAction,
    OnEvent,
    OnScore,
    OnTransition,
    WebhookAction,
)


def fires_on(trigger: CompiledTrigger, occasion: Occasion) -> bool:
    on = trigger.definition.on
    if isinstance(on, OnTransition):
        if occasion.event_type != "lifecycle.stage_changed" or occasion.to_stage != on.to_stage:
            return False
        return on.from_stages is None or occasion.from_stage in on.from_stages
    if isinstance(on, OnEvent):
        return occasion.event_type == on.event_type
    if isinstance(on, OnScore):
        if occasion.event_type != "lifecycle.score_updated":
            return False
        return crossed(
            on, (occasion.previous_scores or {}).get(on.score), occasion.data.get(on.score)
        )
    return False


def crossed(on: OnScore, before: Any, after: Any) -> bool:
    """A crossing: the new score is past the threshold and the previous one was not (a
    customer scored for the first time crosses if the first score is past it)."""
    if not isinstance(after, int | float):
        return False
    prior = before if isinstance(before, int | float) else None
    if on.direction == "above":
        return after >= on.threshold and (prior is None or prior < on.threshold)
    return after <= on.threshold and (prior is None or prior > on.threshold)


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


def render(trigger: CompiledTrigger, context: dict[str, Any]) -> Rendered:
    """Raises TemplateProblem when a template fails (missing field, sandbox refusal)."""
    action = trigger.definition.action
    t = trigger.templates
    if isinstance(action, WebhookAction):
        return Rendered(
            {"url": action.url, "headers": action.headers, "content_type": action.content_type},
            t["payload"].render(context),
        )
    if isinstance(action, EmailAction):
        return Rendered(
            {"to": t["to"].render(context).strip(), "subject": t["subject"].render(context)},
            t["body"].render(context),
        )
    assert isinstance(action, KafkaAction)
    return Rendered({"topic": action.topic}, t["payload"].render(context))


def preview_json(rendered: Rendered) -> Any:
    """The payload as JSON when it is JSON (what a preview shows), else the text."""
    try:
        return json.loads(rendered.payload)
    except ValueError:
        return rendered.payload
