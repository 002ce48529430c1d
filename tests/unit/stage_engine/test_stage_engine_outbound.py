"""The published lifecycle.stage_changed events: built without pydantic for speed, they
must be exactly what the shared envelope code builds and accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from clm_events.envelope import encode_structured, new_event, parse_structured
from clm_stage_engine.domain.inputs import from_us, to_us
from clm_stage_engine.domain.timeline import Transition
from clm_stage_engine.outbound import SOURCE, Origin, retracted_event, stage_changed_event

FACTS = {
    "purchases_total": 3,
    "revenue_total": 59.9,
    "days_since_last_purchase": 12.5,
    "last_purchase_at": "2026-01-01T10:00:00.250000Z",
    "churn_probability": None,
    "name": "Zoë",
}


TRANSITIONS = [
    Transition(
        to_us(datetime(2026, 1, 2, tzinfo=UTC)),
        None,
        "prospect",
        "event",
        ("shop/web", "e-1", "web.signed_up"),
        1,
        FACTS,
    ),
    Transition(
        to_us(datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)),
        "active",
        "at_risk",
        "time",
        None,
        2,
        FACTS,
    ),
    Transition(
        to_us(datetime(2026, 5, 1, tzinfo=UTC)),
        "loyal",
        "lapsed",
        "model_change",
        None,
        3,
        None,
    ),
]


@pytest.mark.parametrize("transition", TRANSITIONS)
@pytest.mark.parametrize("origin", [None, Origin(), Origin(send_actions=True)])
def test_stage_changed_events_equal_what_the_envelope_builds(
    transition: Transition, origin: Origin | None
) -> None:
    tid = transition.id("cust-1")
    data: dict[str, Any] = {
        "from_stage": transition.from_stage,
        "to_stage": transition.to_stage,
        "at": from_us(transition.at),
        "cause": transition.cause,
        "facts": transition.facts or {},
        "model_version": transition.model_version,
        "transition_id": tid,
        "entry": 2,
    }
    if origin is not None:
        data |= {"origin": "backfill", "send_actions": origin.send_actions}
    if transition.event is not None:
        source, id, type = transition.event
        data["cause_event"] = {"source": source, "id": id, "type": type}
    reference = new_event(
        "lifecycle.stage_changed",
        id=f"{tid}.1",  # published again after a retraction
        source=SOURCE,
        subject="cust-1",
        time=from_us(transition.at),
        data=data,
    )

    ours = stage_changed_event(
        "cust-1", f"{tid}.1", transition, transition_id=tid, entry=2, origin=origin
    )

    assert ours == encode_structured(reference)
    assert parse_structured(ours) == reference


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_retraction_events_equal_what_the_envelope_builds(transition: Transition) -> None:
    tid = transition.id("cust-1")
    data: dict[str, Any] = {
        "transition_id": tid,
        "from_stage": transition.from_stage,
        "to_stage": transition.to_stage,
        "at": from_us(transition.at),
        "cause": transition.cause,
    }
    reference = new_event(
        "lifecycle.transition_retracted",
        id=f"{tid}.x1",
        source=SOURCE,
        subject="cust-1",
        time=from_us(transition.at),
        data=data,
    )
    ours = retracted_event("cust-1", f"{tid}.x1", transition)
    assert ours == encode_structured(reference)
    assert parse_structured(ours) == reference
