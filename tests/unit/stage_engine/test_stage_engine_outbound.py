"""The published lifecycle.stage_changed events: built without pydantic for speed, they
must be exactly what the shared envelope code builds and accepts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clm_events.envelope import encode_structured, new_event, parse_structured
from clm_stage_engine.domain.inputs import from_us, to_us
from clm_stage_engine.domain.timeline import Transition
from clm_stage_engine.handlers import SOURCE, stage_changed_event

FACTS = {
    "purchases_total": 3,
    "revenue_total": 59.9,
    "days_since_last_purchase": 12.5,
    "last_purchase_at": "2026-01-01T10:00:00.250000Z",
    "churn_probability": None,
    "name": "Zoë",
}


@pytest.mark.parametrize(
    "transition",
    [
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
    ],
)
def test_stage_changed_events_equal_what_the_envelope_builds(transition: Transition) -> None:
    tid = transition.id("cust-1")
    data = {
        "from_stage": transition.from_stage,
        "to_stage": transition.to_stage,
        "at": from_us(transition.at),
        "cause": transition.cause,
        "facts": transition.facts or {},
        "model_version": transition.model_version,
    }
    if transition.event is not None:
        source, id, type = transition.event
        data["cause_event"] = {"source": source, "id": id, "type": type}
    reference = new_event(
        "lifecycle.stage_changed",
        id=tid,
        source=SOURCE,
        subject="cust-1",
        time=from_us(transition.at),
        data=data,
    )

    ours = stage_changed_event("cust-1", tid, transition)

    assert ours == encode_structured(reference)
    assert parse_structured(ours) == reference
