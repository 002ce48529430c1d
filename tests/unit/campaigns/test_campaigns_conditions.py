"""Trigger conditions see typed values, and conditions that can never work are refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from clm_campaigns.domain.conditions import ConditionError, compile_condition
from clm_campaigns.domain.evaluate import condition_context
from clm_campaigns.domain.projection import CustomerState, Occasion, apply
from clm_campaigns.domain.triggers import TriggerDefinition

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def customer(facts: dict[str, Any]) -> CustomerState:
    """A customer whose facts arrived on a transition, as JSON."""
    state = CustomerState("c1")
    apply(
        state,
        event_id="e1",
        source="clm/stage-engine",
        event_type="lifecycle.stage_changed",
        time=NOW,
        data={"from_stage": "active", "to_stage": "at_risk", "at": NOW.isoformat(), "facts": facts},
    )
    return state


def occasion() -> Occasion:
    return Occasion("e2", "shop", "purchase.completed", NOW, {"order_id": "o1"})


def matches(source: str, state: CustomerState) -> bool:
    condition = compile_condition(source)
    return condition.matches(condition_context(state, occasion(), condition.reads))


def test_clv_sent_as_a_decimal_string_compares_as_a_number() -> None:
    state = customer({"clv": "1822.50"})
    assert matches("facts.clv > 100.0", state)
    assert matches("facts.clv != null && facts.clv > 100.0", state)
    assert not matches("facts.clv > 2000.0", state)


def test_scores_clv_sent_as_a_decimal_string_compares_as_a_number() -> None:
    state = CustomerState("c1")
    scores = {
        "clv": "1822.50",
        "churn_probability": 0.7,
        "p_alive": 0.3,
        "expected_purchases": 1,  # a whole number in JSON is still a double
        "model": "bg_nbd",
    }
    apply(
        state,
        event_id="e1",
        source="clm/scoring",
        event_type="lifecycle.score_updated",
        time=NOW,
        data=scores,
    )
    assert matches("scores.clv > 100.0", state)
    assert matches("facts.clv > 100.0", state)  # the latest score is also a fact
    assert matches("scores.expected_purchases / 2.0 == 0.5", state)
    assert not matches("scores.clv > 2000.0", state)


def test_time_facts_and_the_event_time_compare_as_timestamps() -> None:
    state = customer({"last_purchase_at": "2026-11-01T10:00:00Z"})
    assert matches('facts.last_purchase_at > timestamp("2026-01-01T00:00:00Z")', state)
    assert matches('facts.last_purchase_at < event.time - duration("240h")', state)
    assert not matches('facts.last_purchase_at < event.time - duration("480h")', state)
    assert matches('event.time >= timestamp("2026-11-20T12:00:00Z")', state)


def test_a_double_fact_sent_as_a_whole_number_still_takes_double_arithmetic() -> None:
    assert matches("facts.revenue_total / 2.0 > 10.0", customer({"revenue_total": 30}))


def test_an_unreadable_value_is_null_so_the_condition_does_not_match() -> None:
    state = customer({"clv": "n/a", "last_purchase_at": "last tuesday", "purchases_total": "x"})
    assert not matches("facts.clv > 1.0", state)
    assert matches("facts.clv == null", state)
    assert not matches('facts.last_purchase_at > timestamp("2026-01-01T00:00:00Z")', state)
    assert not matches("facts.purchases_total > 1", state)


def test_a_division_by_a_zero_fact_does_not_match_instead_of_failing() -> None:
    state = customer({"purchases_total": 4, "purchases_30d": 0})
    assert not matches("facts.purchases_total / facts.purchases_30d > 1", state)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ('facts.clv > "100"', 'facts.clv is a number (double) and "100" is a string'),
        ("facts.subscription_status == 1", "facts.subscription_status is a string and 1 is a"),
        ('facts.latest_nps == "9"', 'facts.latest_nps is a number (int) and "9" is a string'),
        ("facts.email > 5", "facts.email is a string and 5 is a number"),
        (
            'facts.subscription_status == "paused"',
            "facts.subscription_status is one of none, active, cancelled: 'paused' never",
        ),
        ('"paused" == facts["subscription_status"]', "facts.subscription_status is one of"),
        ('facts.open_ticket_max_priority == "medium"', "'medium' never matches"),
        ('stage in ["active", "zombie"]', "stage is one of prospect, onboarding, active,"),
        ("facts.purchases_total == null", "facts.purchases_total is never null"),
        ("scores.clv == null", "scores.clv is never null"),
        (
            'facts.last_purchase_at > "2026-01-01T00:00:00Z"',
            'compare with timestamp("2026-01-01T00:00:00Z")',
        ),
        ('event.time < duration("1h")', "event.time is a timestamp and duration"),
        ("scores.model == 1", "scores.model is a string"),
        ("facts.purchases_total == 1.5", "facts.purchases_total is a whole number"),
        ('facts.last_purchase_at > timestamp("2026-01-01")', "not a valid timestamp"),
        # Inside a larger expression, still exactly a field against a literal.
        ('facts.clv != null && (facts.email == 5 || stage == "at_risk")', "facts.email"),
    ],
)
def test_comparisons_that_are_never_true_are_refused_naming_the_field(
    source: str, reason: str
) -> None:
    with pytest.raises(ConditionError, match=re.escape(reason)):
        compile_condition(source)


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("facts.purchases_total / 2.0 > 1.0", "facts.purchases_total is an int"),
        # Behind guards that only some customers pass, the branch still always fails.
        ('stage == "at_risk" && facts.purchases_total / 2.0 > 1.0', "purchases_total"),
        ("facts.purchases_total > 3 && facts.purchases_total / 2.0 > 1.0", "purchases_total"),
        ("facts.days_since_last_purchase / 7 > 2.0", "days_since_last_purchase is a double"),
        ('facts.last_purchase_at + 1 > timestamp("2026-01-01T00:00:00Z")', "timestamp + int"),
    ],
)
def test_conditions_that_mix_types_for_every_customer_are_refused(source: str, named: str) -> None:
    with pytest.raises(ConditionError, match=re.escape(named)):
        compile_condition(source)


@pytest.mark.parametrize(
    "source",
    [
        "facts.revenue_total > 100.0 && scores.churn_probability >= 0.5",  # the docs' example
        "facts.clv != null && facts.clv > 100.0",
        "scores.clv != null",
        "facts.clv == 100 || 1 < facts.clv",  # numbers compare across int and double
        "facts.revenue_total * 2.0 > 100",
        "facts.purchases_total * 2 > 5 && -facts.purchases_total < 0",
        'facts.subscription_status in ["active", "cancelled"] && stage != "lapsed"',
        'facts.email == null || facts.email.endsWith("@example.com")',
        'facts.email == "stage == \\"zombie\\"" || facts.name == r"a\\b > 1"',
        'event.data.plan == "pro" && event.data.seats * 2.0 > 1.0',  # unknown until run
        "double(scores.clv) > 100.0 && int(facts.clv) > 100",
        'timestamp(facts.last_purchase_at) > timestamp("2026-01-01T00:00:00Z")',
        "facts[stage] == 2.0 && size(facts) > 3",
    ],
)
def test_sound_conditions_are_accepted(source: str) -> None:
    compile_condition(source)


def test_a_refusal_is_reported_at_the_condition() -> None:
    body = {
        "name": "t",
        "on": {"kind": "transition", "to_stage": "at_risk"},
        "condition": 'facts.subscription_status == "paused"',
        "action": {"channel": "webhook", "url": "https://x.example/h", "payload": "{}"},
    }
    with pytest.raises(ValidationError) as caught:
        TriggerDefinition.model_validate(body)
    error = caught.value.errors()[0]
    assert error["loc"] == ("condition",)
    assert "'paused' never matches" in error["msg"]


def _tracked(name: str, **properties: Any) -> Occasion:
    data = {"name": name, "properties": properties}
    return Occasion("e3", "segment", "web.tracked", NOW, data)


SHOES = 'event.name == "Product Viewed" && event.properties.category == "shoes"'


@pytest.mark.parametrize(
    ("event", "fires"),
    [
        (_tracked("Product Viewed", category="shoes", sku="boot-1"), True),
        (_tracked("Product Viewed", category="hats"), False),
        (_tracked("Product Viewed"), False),  # no such property: no match, no error
        (_tracked("Cart Viewed", category="shoes"), False),
    ],
)
def test_a_named_event_trigger_reads_the_name_and_properties(event: Occasion, fires: bool) -> None:
    condition = compile_condition(SHOES)
    state = CustomerState("c1")
    assert condition.matches(condition_context(state, event, condition.reads)) is fires


def _definition(on: dict[str, Any], condition: str) -> TriggerDefinition:
    return TriggerDefinition.model_validate(
        {
            "name": "t",
            "on": on,
            "condition": condition,
            "action": {"channel": "webhook", "url": "https://x.example/h", "payload": "{}"},
        }
    )


def test_only_named_events_have_a_name_and_properties() -> None:
    _definition({"kind": "event", "event_type": "web.tracked"}, SHOES)
    for on in (
        {"kind": "event", "event_type": "purchase.completed"},
        {"kind": "transition", "to_stage": "at_risk"},
    ):
        with pytest.raises(ValidationError) as caught:
            _definition(on, SHOES)
        error = caught.value.errors()[0]
        assert error["loc"] == ("condition",)
        assert error["msg"].startswith("Value error, event.name: only web.tracked"), error
    with pytest.raises(ValidationError, match=r"event\.name is a string and 3"):
        _definition({"kind": "event", "event_type": "web.tracked"}, "event.name == 3")
