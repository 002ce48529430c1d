"""The simple part of CEL (domain.condition_ast) evaluated in plain Python over a
customer's projection, exactly as the CEL engine evaluates it: a segment is evaluated for
every customer of every batch, and the engine's call (about 6 us, plus building its
context) was most of what live membership cost.

Values are converted as the CEL context converts them (conditions.TYPES). CEL's errors are
None here: a missing key, an ordering across types or a bare field that is not a bool is
an error; `&&` is false if any side is false, `||` true if any side is true (CEL's
logical operators are commutative over errors), otherwise an error propagates; `!` keeps
it; an error at the top is no match.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from clm_campaigns.domain import condition_ast as ast
from clm_campaigns.domain.conditions import _CONVERTERS
from clm_campaigns.domain.projection import _SCORE_FACTS, TRAIT_FACTS, CustomerState
from clm_events.facts import FACTS

Native = Callable[[CustomerState], bool | None]  # None: CEL's error
_ABSENT: Any = object()
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def compile_native(source: str) -> Native | None:
    """A function true exactly where the condition matches (None where CEL errs), or None
    when the condition is beyond the simple part."""
    tree = ast.parse(source)
    return None if tree is None else _compile(tree)


def _getter(f: ast.Field) -> Callable[[CustomerState], Any]:
    """The field's value as the condition is given it, or _ABSENT (an error on access)."""
    name = f.name
    if f.root == "stage":
        return lambda s: s.stage if isinstance(s.stage, str) else None
    convert = _CONVERTERS.get(f.root, {}).get(name)
    if f.root == "traits":
        return lambda s: s.traits.get(name, _ABSENT)
    if f.root == "scores":
        if convert is None:
            return lambda s: s.scores.get(name, _ABSENT)
        return lambda s: _ABSENT if (v := s.scores.get(name, _ABSENT)) is _ABSENT else convert(v)
    # facts.x as CustomerState.some_facts builds it.
    trait, score, fact = name in TRAIT_FACTS, name in _SCORE_FACTS, name in FACTS

    def facts(s: CustomerState) -> Any:
        if trait and s.traits.get(name) is not None:
            v = s.traits[name]
        elif score and s.scores.get(name) is not None:
            v = s.scores[name]
        elif fact:
            v = s.facts.get(name)
        else:
            return _ABSENT
        return v if convert is None else convert(v)

    return facts


def _is_number(v: Any) -> bool:
    kind = type(v)
    return kind is int or kind is float


def _equal(lit: ast.Literal) -> Callable[[Any], bool]:
    """CEL's == against a literal: across types false (a bool is not a number)."""
    value = lit.value
    if lit.kind == "null":
        return lambda v: v is None
    if lit.kind == "bool":
        return lambda v: type(v) is bool and v == value
    if lit.kind == "number":
        return lambda v: _is_number(v) and v == value
    return lambda v: type(v) is str and v == value


def _compile(node: ast.Node) -> Native:
    if isinstance(node, ast.Const):
        constant = node.value
        return lambda s: constant
    if isinstance(node, ast.Not):
        inner = _compile(node.operand)
        return lambda s: None if (r := inner(s)) is None else not r
    if isinstance(node, ast.And | ast.Or):
        parts = tuple(_compile(p) for p in node.parts)
        decisive = isinstance(node, ast.Or)  # what one side alone decides

        def logical(s: CustomerState) -> bool | None:
            erred = False
            for part in parts:
                r = part(s)
                if r is decisive:
                    return decisive
                erred = erred or r is None
            return None if erred else not decisive

        return logical
    get = _getter(node.field)
    if isinstance(node, ast.Bare):
        return lambda s: v if type(v := get(s)) is bool else None
    if isinstance(node, ast.In):
        tests = tuple(_equal(e) for e in node.literals)
        return lambda s: None if (v := get(s)) is _ABSENT else any(t(v) for t in tests)
    lit, op = node.literal, node.op
    if op in ("==", "!="):
        equal, negate = _equal(lit), op == "!="
        return lambda s: None if (v := get(s)) is _ABSENT else equal(v) is not negate
    compare, bound = _ORDER[op], lit.value
    fits = _is_number if lit.kind == "number" else (lambda v: type(v) is str)
    return lambda s: compare(v, bound) if fits(v := get(s)) else None
