"""Segment conditions: RFM scores and traits are typed as conditions see them, the event
is refused, and a segment matches the projection as a trigger's condition would."""

from __future__ import annotations

import pytest

from clm_campaigns.api import rfm_segment_names
from clm_campaigns.domain.conditions import ConditionError
from clm_campaigns.domain.projection import CustomerState
from clm_campaigns.domain.segments import CompiledSegment, compile_segment_condition


def _segment(condition: str) -> CompiledSegment:
    return CompiledSegment("s", 1, compile_segment_condition(condition))


def test_rfm_scores_traits_and_stage_are_matched() -> None:
    state = CustomerState(
        "c1",
        stage="at_risk",
        traits={"plan": "gold"},
        facts={"purchases_total": 3},
        scores={"rfm_segment": "At risk", "rfm_recency": 2, "rfm_cell": "233"},
    )
    assert _segment('scores.rfm_segment == "At risk" && scores.rfm_recency <= 2').matches(state)
    assert _segment('traits.plan == "gold" && stage == "at_risk"').matches(state)
    assert _segment('scores.rfm_cell.startsWith("2") && facts.purchases_total > 2').matches(state)
    assert not _segment("scores.rfm_frequency >= 4").matches(state)  # absent: no match
    assert not _segment('traits.missing == "x"').matches(state)


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ('scores.rfm_segment == "at risk"', "scores.rfm_segment is one of"),
        ('scores.rfm_recency == "5"', "is a number"),
        ("scores.rfm_recency > 2.5 + facts.purchases_total", "mixes types"),
        ('event.type == "x"', "sees no event"),
        ("scores.rfm_nope > 1", "unknown scores field"),
    ],
)
def test_what_can_never_work_is_refused(condition: str, reason: str) -> None:
    with pytest.raises(ConditionError, match=reason):
        compile_segment_condition(condition)


def test_rfm_filters_take_the_name_or_its_slug() -> None:
    assert rfm_segment_names("at_risk") == ["At risk"]
    assert rfm_segment_names("At risk") == ["At risk"]
    assert rfm_segment_names("cant_lose") == ["Can't lose"]
    assert rfm_segment_names(None) is None


def test_a_segment_reads_the_facts_a_trigger_condition_would() -> None:
    state = CustomerState(
        "c1",
        traits={"email": "a@example.com", "plan": "gold"},
        facts={"purchases_total": 3, "email": "old@example.com", "clv": 1.0},
        scores={"clv": "12.50", "churn_probability": None},
    )
    everything = state.all_facts()
    assert state.some_facts(everything) == everything
    names = ["email", "clv", "churn_probability", "purchases_total", "revenue_total"]
    assert state.some_facts(names) == {n: everything[n] for n in names}
