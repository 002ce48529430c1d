"""Segments: a CEL condition over the customer as campaigns projects it (stage, facts,
scores with RFM, traits; no event: a segment is a state, not an occasion)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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

    # What it reads: "stage", "traits.x", or "traits" for the whole map (and likewise).
    inputs: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "native", compile_native(self.condition.source))
        object.__setattr__(self, "inputs", _inputs(self.condition.reads))

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


def _inputs(reads: Mapping[str, frozenset[str] | None]) -> frozenset[str]:
    out: set[str] = set()
    for name, names in reads.items():
        if name == "stage":
            out.add("stage")
        elif names is None:  # the whole map; facts are built from traits and scores too
            out |= {"facts", "traits", "scores"} if name == "facts" else {name}
        elif name == "facts":
            for n in names:  # as CustomerState.some_facts builds them
                out |= {f"facts.{n}", f"traits.{n}", f"scores.{n}"}
        else:
            out |= {f"{name}.{n}" for n in names}
    return frozenset(out)


@dataclass(frozen=True)
class Inputs:
    """A customer's projection as loaded, to tell what a batch changed."""

    stage: str | None
    traits: dict[str, Any]
    facts: dict[str, Any]
    scores: dict[str, Any]

    @classmethod
    def of(cls, state: CustomerState) -> Inputs:
        return cls(state.stage, dict(state.traits), dict(state.facts), dict(state.scores))

    def changed(self, state: CustomerState) -> frozenset[str]:
        out = {"stage"} if state.stage != self.stage else set()
        for root, old, new in (
            ("traits", self.traits, state.traits),
            ("facts", self.facts, state.facts),
            ("scores", self.scores, state.scores),
        ):
            if old != new:
                out.add(root)  # for the segments that read the whole map
                out |= {f"{root}.{k}" for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
                out |= {f"{root}.{k}" for k in old.keys() ^ new.keys()}  # a null added or gone
        return frozenset(out)


def compile_segment_condition(source: str, *, check_types: bool = True) -> Condition:
    """ConditionError when the condition does not compile, mixes types or reads the
    event."""
    condition = compile_condition(source, check_types=check_types)
    if "event" in condition.reads:
        raise ConditionError("a segment's condition sees no event: stage, facts, scores, traits")
    return condition


def members(segment: CompiledSegment, states: Iterable[CustomerState]) -> list[str]:
    return [s.customer_id for s in states if segment.matches(s)]
