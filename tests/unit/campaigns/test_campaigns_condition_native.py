"""Segment conditions evaluated natively match exactly where the CEL engine matches:
random conditions over random projections (every JSON type, numbers in strings, missing
keys, nulls); and what is beyond the simple part is left to the engine."""

from __future__ import annotations

from typing import Any

from conditionkit import cases, conditions, customer, states
from hypothesis import given, settings
from hypothesis import strategies as st

from clm_campaigns.domain.condition_native import compile_native
from clm_campaigns.domain.conditions import ConditionError
from clm_campaigns.domain.segments import CompiledSegment, compile_segment_condition


@settings(max_examples=3000, deadline=None, database=None)
@given(rows=st.lists(states, min_size=1, max_size=8), source=conditions)
def test_native_evaluation_equals_the_cel_engine(rows: list[Any], source: str) -> None:
    _agree([customer(i, row) for i, row in enumerate(rows)], [source])


@settings(max_examples=3000, deadline=None, database=None)
@given(case=cases())
def test_native_evaluation_equals_the_cel_engine_on_near_misses(case: Any) -> None:
    _agree(*case)


def _agree(customers: list[Any], sources: list[str]) -> None:
    for source in sources:
        try:
            condition = compile_segment_condition(source, check_types=False)
        except ConditionError:
            continue
        segment = CompiledSegment("x", 1, condition)
        if segment.native is None:  # a bool or null ordered: the engine's alone
            assert "true" in source or "false" in source or "null" in source, source
            continue
        for state in customers:
            assert segment.matches(state) == segment.by_cel(state), (source, state)


def test_conditions_beyond_the_simple_part_stay_with_the_engine() -> None:
    for source in [
        "facts.revenue_total > facts.purchases_total * 10.0",
        'has(traits.plan) && traits.plan == "gold"',
        'scores["clv"] > 5.0',
        "size(traits) > 2",
        "!traits.vip",
        "traits.vip < true",
    ]:
        assert compile_native(source) is None, source
