"""A segment's CEL condition as SQL over the customer projection, so that counting the
members of a draft over a million customers is one scan inside PostgreSQL instead of a
million CEL evaluations in Python (about 10 us each, before building their contexts).

What translates is the simple part of CEL that domain.condition_ast parses; anything else
(arithmetic, functions, macros, two fields compared) returns None and the caller
evaluates in Python.

Exact means: the SQL is true exactly where `Condition.matches` is. A field's value is
first converted as the condition converts it (conditions.TYPES), and CEL's errors map onto
SQL's NULL: a missing key or an ordering across types is an error, `&&`/`||` absorb an
error when the other side decides (as both CEL and SQL's three-valued logic do), `!`
keeps it, and an error at the top is no match. Values whose conversion this module does
not replicate (a number in a string with spaces, more than 15 digits, a timestamp) make
the row `undecided`: the caller evaluates those rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnElement

from clm_campaigns.domain import condition_ast as ast
from clm_campaigns.domain.conditions import TYPES
from clm_campaigns.domain.projection import _SCORE_FACTS, TRAIT_FACTS
from clm_campaigns.models import customers
from clm_events.facts import FACTS

# Numbers whose text PostgreSQL's float8 and Python's float() both read exactly the same
# (both round correctly) and well inside float8's range.
_DECIMAL = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$"
_INTEGER = r"^-?[0-9]{1,15}$"
# JSON's null (a bound "null" would be the JSON string "null").
_JSON_NULL = sa.literal_column("'null'::jsonb", JSONB)


class Untranslatable(Exception):
    """The condition names a field of a kind this module does not translate."""


@dataclass(frozen=True)
class ConditionSql:
    matches: ColumnElement[bool]  # true exactly where the condition matches...
    undecided: ColumnElement[bool]  # ...except on these rows: evaluate them in Python


def condition_sql(source: str) -> ConditionSql | None:
    """The condition as SQL over `customers`, or None when it is not translatable."""
    tree = ast.parse(source)
    if tree is None:
        return None
    try:
        values = {f: _field(f) for f in ast.fields(tree)}
    except Untranslatable:
        return None
    matches = sa.func.coalesce(_sql(tree, values), sa.false())
    undecided = sa.or_(sa.false(), *(sa.func.coalesce(v.unclean, False) for v in values.values()))
    return ConditionSql(matches=matches, undecided=undecided)


@dataclass
class _Value:
    """A field as the condition sees it: absent (an error on access), null, a string, a
    number, a bool or something else (a map or a list)."""

    absent: ColumnElement[bool]
    is_null: ColumnElement[bool]
    is_str: ColumnElement[bool]
    is_num: ColumnElement[bool]
    is_bool: ColumnElement[bool]
    text: ColumnElement[str]
    unclean: ColumnElement[bool] = field(default_factory=sa.false)

    def num(self) -> ColumnElement[float]:
        return sa.cast(self.text, sa.Float(precision=53))

    def boolean(self) -> ColumnElement[bool]:
        return sa.cast(self.text, sa.Boolean)


def _stage() -> _Value:
    stage = customers.c.stage
    return _Value(
        absent=sa.false(),
        is_null=stage.is_(None),
        is_str=stage.is_not(None),
        is_num=sa.false(),
        is_bool=sa.false(),
        text=stage,
    )


def _json_value(j: ColumnElement[Any], absent: ColumnElement[bool], kind: str) -> _Value:
    t = sa.func.jsonb_typeof(j)
    text = j.op("#>>", return_type=sa.Text)(sa.literal([], ARRAY(sa.Text)))
    numeric = t.in_(["number", "string"])
    if kind in ("double", "int"):
        pattern = _DECIMAL if kind == "double" else _INTEGER
        clean = text.regexp_match(pattern)
        return _Value(
            absent=absent,
            is_null=t.in_(["boolean", "null", "object", "array"]),
            is_str=sa.false(),
            is_num=sa.and_(numeric, clean),
            is_bool=sa.false(),
            text=text,
            unclean=sa.and_(numeric, sa.not_(clean)),
        )
    if kind == "string":
        return _Value(
            absent=absent,
            is_null=t != "string",
            is_str=t == "string",
            is_num=sa.false(),
            is_bool=sa.false(),
            text=text,
        )
    if kind in ("as_is", "map"):
        clean = text.regexp_match(_DECIMAL)
        return _Value(
            absent=absent,
            is_null=t == "null",
            is_str=t == "string",
            is_num=sa.and_(t == "number", clean),
            is_bool=t == "boolean",
            text=text,
            unclean=sa.and_(t == "number", sa.not_(clean)),
        )
    raise Untranslatable(f"a {kind} field")


def _field(f: ast.Field) -> _Value:
    if f.root == "stage":
        return _stage()
    root, name = f.root, f.name
    kind = TYPES.get(f"{root}.{name}", "as_is").rstrip("?")
    if root in ("traits", "scores"):
        column = customers.c[root]
        # A NULL column reads as {} (CustomerState's default): the key is absent.
        absent = sa.func.coalesce(sa.not_(column.has_key(name)), sa.true())
        return _json_value(column[name], absent, kind)
    # facts.x as CustomerState.some_facts builds it: a trait or the latest score first,
    # then the stage engine's fact (null when unknown; absent if not a fact at all).
    sources: list[ColumnElement[Any]] = []
    if name in TRAIT_FACTS:
        sources.append(sa.func.nullif(customers.c.traits[name], _JSON_NULL))
    if name in _SCORE_FACTS:
        sources.append(sa.func.nullif(customers.c.scores[name], _JSON_NULL))
    if name in FACTS:
        sources += [customers.c.facts[name], _JSON_NULL]
    if not sources:
        return _json_value(sa.null(), sa.true(), kind)
    j = sa.func.coalesce(*sources) if len(sources) > 1 else sources[0]
    return _json_value(j, sa.false() if name in FACTS else j.is_(None), kind)


def _sql(node: ast.Node, values: dict[ast.Field, _Value]) -> ColumnElement[bool]:
    """TRUE, FALSE, or NULL where CEL errs."""
    if isinstance(node, ast.Const):
        return sa.true() if node.value else sa.false()
    if isinstance(node, ast.Not):
        return sa.not_(_sql(node.operand, values))
    if isinstance(node, ast.And):
        return sa.and_(*(_sql(p, values) for p in node.parts))
    if isinstance(node, ast.Or):
        return sa.or_(*(_sql(p, values) for p in node.parts))
    v = values[node.field]
    if isinstance(node, ast.Bare):
        return sa.case((v.is_bool, v.boolean()), else_=sa.null())
    if isinstance(node, ast.In):
        if not node.literals:
            return sa.case((v.absent, sa.null()), else_=sa.false())
        return sa.or_(*(_equal(v, e) for e in node.literals))
    return _compare(v, node.op, node.literal)


def _compare(v: _Value, op: str, lit: ast.Literal) -> ColumnElement[bool]:
    if op == "==":
        return _equal(v, lit)
    if op == "!=":
        return sa.not_(_equal(v, lit))
    if lit.kind == "number":
        ordered = v.num().op(op, is_comparison=True)(lit.value)
        return sa.case((v.absent, sa.null()), (v.is_num, ordered), else_=sa.null())
    # A string (the parser orders nothing else): CEL orders strings by code point, the
    # "C" collation's byte order in UTF-8.
    ordered = v.text.collate("C").op(op, is_comparison=True)(lit.value)
    return sa.case((v.absent, sa.null()), (v.is_str, ordered), else_=sa.null())


def _equal(v: _Value, lit: ast.Literal) -> ColumnElement[bool]:
    """CEL's ==: across types false, with null true only for null."""
    # CASE, not AND: PostgreSQL may evaluate AND's sides in any order, and a cast must
    # only see text it can read.
    if lit.kind == "null":
        same: ColumnElement[bool] = v.is_null
    elif lit.kind == "string":
        same = sa.case((v.is_str, v.text == lit.value), else_=sa.false())
    elif lit.kind == "number":
        same = sa.case((v.is_num, v.num() == float(lit.value)), else_=sa.false())
    else:
        same = sa.case((v.is_bool, v.boolean() == lit.value), else_=sa.false())
    return sa.case((v.absent, sa.null()), else_=sa.func.coalesce(same, sa.false()))
