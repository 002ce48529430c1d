"""Segments: a CEL condition over the customer as campaigns projects it (stage, facts,
scores with RFM, traits; no event: a segment is a state, not an occasion)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from clm_campaigns.domain.condition_native import Native, compile_native
from clm_campaigns.domain.conditions import Condition, ConditionError, compile_condition
from clm_campaigns.domain.evaluate import NO_EVENT, condition_context
from clm_campaigns.domain.projection import CustomerState


@dataclass(frozen=True)
class CompiledSegment:
    id: str
    version: int
    condition: Condition
    # The condition without the CEL engine, when it is simple enough (most are).
    native: Native | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "native", compile_native(self.condition.source))

    def matches(self, state: CustomerState) -> bool:
        if self.native is not None:
            return self.native(state) is True
        return self.by_cel(state)

    def by_cel(self, state: CustomerState) -> bool:
        reads = self.condition.reads
        context = condition_context(state, NO_EVENT, [r for r in reads if r != "facts"])
        if "facts" in reads:  # only the facts it names, not the whole map (per customer)
            names = reads["facts"]
            context["facts"] = state.all_facts() if names is None else state.some_facts(names)
        return self.condition.matches(context)


def compile_segment_condition(source: str, *, check_types: bool = True) -> Condition:
    """ConditionError when the condition does not compile, mixes types or reads the
    event."""
    condition = compile_condition(source, check_types=check_types)
    if "event" in condition.reads:
        raise ConditionError("a segment's condition sees no event: stage, facts, scores, traits")
    return condition


def members(segment: CompiledSegment, states: Iterable[CustomerState]) -> list[str]:
    return [s.customer_id for s in states if segment.matches(s)]
