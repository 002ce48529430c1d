"""Trigger conditions: CEL expressions over a customer's facts, stage, scores and the event.

Compiled once per trigger version and evaluated per match. The Rust CEL core evaluates in
~10 us, but converting a map argument costs ~20 us per entry (the 27 facts alone took
~0.5 ms): a condition is given only the variables, and of a map only the fields, it names.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from clm_events.facts import FACTS

VARIABLES = ("facts", "stage", "scores", "event")
SCORES = ("clv", "churn_probability", "p_alive", "expected_purchases", "model")
EVENT_FIELDS = ("id", "source", "type", "subject", "time", "data")
_FIELDS: dict[str, tuple[str, ...]] = {
    "facts": tuple(FACTS),
    "scores": SCORES,
    "event": EVENT_FIELDS,
}
# `facts.name`, `facts["name"]`, `has(facts.name)`: the static references we can check.
_ACCESS = re.compile(r"\b(facts|scores|event)\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*[\"'](\w+)[\"']\s*\])")
MAX_LENGTH = 4096


class ConditionError(ValueError):
    """The condition does not compile or names something that does not exist."""


@dataclass(frozen=True)
class Condition:
    source: str
    program: Any  # cel.Program (untyped extension)
    # Per variable used: the fields it reads, or None when it needs the whole value.
    reads: Mapping[str, frozenset[str] | None]

    def matches(self, context: Mapping[str, Any]) -> bool:
        """True only if the expression evaluates to true. A runtime error (a fact still
        null, a type mismatch) means no match: a condition cannot be half met."""
        given: dict[str, Any] = {}
        for name, fields in self.reads.items():
            if name not in context:
                continue
            value = context[name]
            if fields is not None and isinstance(value, Mapping):
                value = {f: value[f] for f in fields if f in value}  # absent stays absent
            given[name] = value
        try:
            return self.program.execute(given) is True
        except (TypeError, ValueError, KeyError, RuntimeError):
            return False


def _reads(source: str, variables: list[str]) -> dict[str, frozenset[str] | None]:
    """A variable whose every mention is a static field access (`facts.x`, `facts["x"]`)
    needs only those fields; any other mention (`size(facts)`, `"x" in facts`,
    `facts[stage]`) needs the whole map."""
    fields: dict[str, set[str]] = {}
    static = Counter[str]()
    for match in _ACCESS.finditer(source):
        root = match.group(1)
        fields.setdefault(root, set()).add(match.group(2) or match.group(3))
        static[root] += 1
    return {
        v: frozenset(fields[v])
        if v in fields and len(re.findall(rf"\b{v}\b", source)) == static[v]
        else None
        for v in variables
    }


def compile_condition(source: str) -> Condition:
    """Compile and check a condition; ConditionError names what is wrong."""
    if len(source) > MAX_LENGTH:
        raise ConditionError(f"condition is longer than {MAX_LENGTH} characters")
    try:
        program = cel.compile(source)
    except Exception as exc:  # the CEL core raises ValueError with the parser's message
        raise ConditionError(f"condition does not compile: {exc}") from exc
    unknown_vars = sorted(set(program.variables()) - set(VARIABLES))
    if unknown_vars:
        raise ConditionError(
            f"unknown variable(s) {', '.join(unknown_vars)}; conditions see {', '.join(VARIABLES)}"
        )
    for match in _ACCESS.finditer(source):
        root, field = match.group(1), match.group(2) or match.group(3)
        if field not in _FIELDS[root]:
            known = "see clm_events.facts.FACTS" if root == "facts" else ", ".join(_FIELDS[root])
            raise ConditionError(f"unknown {root} field '{field}' ({known})")
    return Condition(source, program, _reads(source, list(program.variables())))
