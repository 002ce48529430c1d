"""A segment's CEL condition as SQL over the customer projection, so that counting the
members of a draft over a million customers is one scan inside PostgreSQL instead of a
million CEL evaluations in Python (about 10 us each, before building their contexts).

Only what can be translated exactly is: `||`, `&&`, `!`, parentheses, `true`/`false`, and
a field (`stage`, `traits.x`, `facts.x`, `scores.x`) compared with a literal (`==`, `!=`,
`<`, `<=`, `>`, `>=`, `in [...]`). Anything else (arithmetic, functions, macros, two
fields compared) returns None and the caller evaluates in Python.

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

from clm_campaigns.domain.conditions import TYPES, Token, _value, tokenize
from clm_campaigns.domain.projection import _SCORE_FACTS, TRAIT_FACTS
from clm_campaigns.models import customers
from clm_events.facts import FACTS

# Numbers whose text PostgreSQL's float8 and Python's float() both read exactly the same
# (both round correctly) and well inside float8's range.
_DECIMAL = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$"
_INTEGER = r"^-?[0-9]{1,15}$"
_ORDER = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}
_SWAP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


class Untranslatable(Exception):
    """The condition uses something this module does not translate."""


@dataclass(frozen=True)
class ConditionSql:
    matches: ColumnElement[bool]  # true exactly where the condition matches...
    undecided: ColumnElement[bool]  # ...except on these rows: evaluate them in Python


def condition_sql(source: str) -> ConditionSql | None:
    """The condition as SQL over `customers`, or None when it is not translatable."""
    parser = _Parser(tokenize(source))
    try:
        expr = parser.disjunction()
        if parser.i != len(parser.tokens):
            raise Untranslatable("trailing tokens")
    except Untranslatable:
        return None
    undecided = sa.or_(sa.false(), *(sa.func.coalesce(u, sa.false()) for u in parser.undecided))
    return ConditionSql(matches=sa.func.coalesce(expr, sa.false()), undecided=undecided)


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


def _field(root: str, name: str) -> _Value:
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
        sources.append(sa.func.nullif(customers.c.traits[name], sa.cast("null", JSONB)))
    if name in _SCORE_FACTS:
        sources.append(sa.func.nullif(customers.c.scores[name], sa.cast("null", JSONB)))
    if name in FACTS:
        sources += [customers.c.facts[name], sa.cast("null", JSONB)]
    if not sources:
        return _json_value(sa.null(), sa.true(), kind)
    j = sa.func.coalesce(*sources) if len(sources) > 1 else sources[0]
    return _json_value(j, sa.false() if name in FACTS else j.is_(None), kind)


@dataclass
class _Literal:
    kind: str  # string, number, bool, null
    value: Any


class _Parser:
    """Recursive descent over CEL's tokens, for the subset in the module's docstring."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens, self.i = tokens, 0
        self.undecided: list[ColumnElement[bool]] = []

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == text:
            self.i += 1
            return True
        return False

    def disjunction(self) -> ColumnElement[bool]:
        parts = [self.conjunction()]
        while self.take("||"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else sa.or_(*parts)

    def conjunction(self) -> ColumnElement[bool]:
        parts = [self.unary()]
        while self.take("&&"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else sa.and_(*parts)

    def unary(self) -> ColumnElement[bool]:
        if self.take("!"):
            token = self.peek()
            if token is None or token.text not in ("(", "!"):
                raise Untranslatable("! of a field")
            return sa.not_(self.unary())
        if self.take("("):
            inner = self.disjunction()
            if not self.take(")"):
                raise Untranslatable("unbalanced parentheses")
            return inner
        token = self.peek()
        if token is not None and token.kind == "bool" and not self._relation_follows(1):
            self.i += 1
            return sa.true() if token.text == "true" else sa.false()
        return self.relation()

    def _relation_follows(self, offset: int) -> bool:
        token = self.peek(offset)
        return token is not None and token.text in (*_SWAP, "in")

    def relation(self) -> ColumnElement[bool]:
        left = self.operand()
        token = self.peek()
        if token is None or token.text not in (*_SWAP, "in"):
            if isinstance(left, _Value):  # a bare field: a bool, else an error
                self.undecided.append(left.unclean)
                return sa.case((left.is_bool, left.boolean()), else_=sa.null())
            raise Untranslatable("a literal alone")
        self.i += 1
        op = token.text
        if op == "in":
            values, elements = left, self.list_literal()
            if not isinstance(values, _Value):
                raise Untranslatable("a literal in a list")
            self.undecided.append(values.unclean)
            return self.within(values, elements)
        right = self.operand()
        if isinstance(left, _Value) and isinstance(right, _Literal):
            value, literal = left, right
        elif isinstance(left, _Literal) and isinstance(right, _Value):
            value, literal, op = right, left, _SWAP[op]
        else:
            raise Untranslatable("not a field against a literal")
        self.undecided.append(value.unclean)
        return self.compare(value, op, literal)

    def operand(self) -> _Value | _Literal:
        token = self.peek()
        if token is None:
            raise Untranslatable("missing operand")
        if token.kind == "ident":
            return self.path()
        return self.literal()

    def path(self) -> _Value:
        root = self.tokens[self.i].text
        if root == "stage":
            self.i += 1
            return _stage()
        dot, name = self.peek(1), self.peek(2)
        if (
            root not in ("traits", "facts", "scores")
            or dot is None
            or dot.text != "."
            or name is None
            or name.kind != "ident"
        ):
            raise Untranslatable(f"{root}: not a field")
        after = self.peek(3)
        if after is not None and after.text in (".", "[", "("):
            raise Untranslatable("a member of a field")
        self.i += 3
        return _field(root, name.text)

    def literal(self) -> _Literal:
        token = self.peek()
        negative = token is not None and token.text == "-"
        if negative:
            self.i += 1
            token = self.peek()
        if token is None:
            raise Untranslatable("missing literal")
        self.i += 1
        if token.kind in ("int", "double") and not token.text.lower().startswith("0x"):
            number = float(token.text) if token.kind == "double" else int(token.text)
            if abs(number) > 2**53:  # compared as doubles, which hold integers this far
                raise Untranslatable("a number beyond 2**53")
            return _Literal("number", -number if negative else number)
        if negative:
            raise Untranslatable("- of something else")
        if token.kind == "string":
            return _Literal("string", _string_value(token.text))
        if token.kind == "bool":
            return _Literal("bool", token.text == "true")
        if token.kind == "null":
            return _Literal("null", None)
        raise Untranslatable(f"a {token.kind} literal")

    def list_literal(self) -> list[_Literal]:
        if not self.take("["):
            raise Untranslatable("in: not a list literal")
        out: list[_Literal] = []
        while not self.take("]"):
            out.append(self.literal())
            if not self.take(","):
                if not self.take("]"):
                    raise Untranslatable("malformed list")
                break
        return out

    def compare(self, v: _Value, op: str, lit: _Literal) -> ColumnElement[bool]:
        if op == "==":
            return self.equal(v, lit)
        if op == "!=":
            return sa.not_(self.equal(v, lit))
        if lit.kind == "number":
            ordered = v.num().op(_ORDER[op], is_comparison=True)(lit.value)
            return sa.case((v.absent, sa.null()), (v.is_num, ordered), else_=sa.null())
        if lit.kind == "string":
            # CEL orders strings by code point: the "C" collation's byte order in UTF-8.
            text = v.text.collate("C")
            ordered = text.op(_ORDER[op], is_comparison=True)(lit.value)
            return sa.case((v.absent, sa.null()), (v.is_str, ordered), else_=sa.null())
        raise Untranslatable(f"{op} with a {lit.kind}")

    def equal(self, v: _Value, lit: _Literal) -> ColumnElement[bool]:
        """CEL's ==: across types false, with null true only for null."""
        # CASE, not AND: PostgreSQL may evaluate AND's sides in any order, and a cast
        # must only see text it can read.
        if lit.kind == "null":
            same: ColumnElement[bool] = v.is_null
        elif lit.kind == "string":
            same = sa.case((v.is_str, v.text == lit.value), else_=sa.false())
        elif lit.kind == "number":
            same = sa.case((v.is_num, v.num() == float(lit.value)), else_=sa.false())
        else:
            same = sa.case((v.is_bool, v.boolean() == lit.value), else_=sa.false())
        return sa.case((v.absent, sa.null()), else_=sa.func.coalesce(same, sa.false()))

    def within(self, v: _Value, elements: list[_Literal]) -> ColumnElement[bool]:
        if not elements:
            return sa.case((v.absent, sa.null()), else_=sa.false())
        return sa.or_(*(self.equal(v, e) for e in elements))


def _string_value(text: str) -> str:
    """A CEL string literal's value (escapes and all), as CEL reads it."""
    value = _value(text)
    if not isinstance(value, str):
        raise Untranslatable("not a string")
    return value
