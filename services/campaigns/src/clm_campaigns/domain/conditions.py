"""Trigger conditions: CEL expressions over a customer's facts, stage, scores and the event.

Compiled once per trigger version and evaluated per match. The Rust CEL core evaluates in
~10 us, but converting a map argument costs ~20 us per entry (the 27 facts alone took
~0.5 ms): a condition is given only the variables, and of a map only the fields, it names.

Values arrive as JSON (times as RFC 3339 strings, CLV as a decimal string) and CEL does not
coerce, so each field a condition is given is first converted to its declared type (TYPES).
Compiling also refuses what can never work for any customer: a field compared with a
literal of another type or outside its values, and an expression whose typed evaluation
fails with a type error.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import cel

from clm_events.catalog import RFM_SEGMENTS, Stage
from clm_events.facts import FACTS

# traits: what the customer's identify calls said (free-form, not typed here).
VARIABLES = ("facts", "stage", "scores", "event", "traits")
MAX_LENGTH = 4096

# The CEL type of everything a condition can name ("?" = may be null). Scores and the
# event's fields are absent rather than null when unknown.
TYPES: dict[str, str] = {
    **{f"facts.{name}": kind for name, (kind, _) in FACTS.items()},
    "scores.clv": "double",  # a decimal string on the wire
    "scores.churn_probability": "double",
    "scores.p_alive": "double",
    "scores.expected_purchases": "double",
    "scores.model": "string",
    # RFM (lifecycle.score_updated): quintiles 1-5, the cell ("545") and its named segment.
    "scores.rfm_recency": "int",
    "scores.rfm_frequency": "int",
    "scores.rfm_monetary": "int",
    "scores.rfm_cell": "string",
    "scores.rfm_segment": "string",
    "stage": "string?",
    "event.id": "string",
    "event.source": "string",
    "event.type": "string",
    "event.subject": "string?",
    "event.time": "timestamp",
    "event.data": "map",  # the producer's payload: not typed here
    # Named events (web.tracked, web.screen_viewed): "Product Viewed" and its properties.
    "event.name": "string?",
    "event.properties": "map",
}
NAMED_EVENTS = ("web.tracked", "web.screen_viewed")
# Strings with a closed set of values (the stage engine's facts, the lifecycle stages).
ENUMS: dict[str, tuple[str, ...]] = {
    "facts.subscription_status": ("none", "active", "cancelled"),
    "facts.open_ticket_max_priority": ("none", "low", "normal", "high", "urgent"),
    "stage": tuple(s.value for s in Stage),
    "scores.rfm_segment": RFM_SEGMENTS,
}
_MAPS = ("facts", "scores", "event")
_FIELDS = {
    root: tuple(path.partition(".")[2] for path in TYPES if path.startswith(f"{root}."))
    for root in _MAPS
}
SCORES, EVENT_FIELDS = _FIELDS["scores"], _FIELDS["event"]


class ConditionError(ValueError):
    """The condition does not compile, names something that does not exist, or can never
    work as written."""


# --- typed values ---------------------------------------------------------------------
# Each returns None for null and for a value that is not of the type (garbage), so the
# condition does not match rather than failing or comparing a string with a number.
# Exact types, not isinstance: JSON gives exact types, a bool is no number, and this is
# the hot path.

Convert = Callable[[Any], Any]
_INT64 = 2**63


def _int(value: Any) -> int | None:
    kind = type(value)
    if kind is float:
        if not value.is_integer():  # also NaN and infinity
            return None
        value = int(value)
    elif kind is str:
        try:
            value = int(value)
        except ValueError:
            return None
    elif kind is not int:
        return None
    return value if -_INT64 <= value < _INT64 else None  # larger would become a uint


def _double(value: Any) -> float | None:
    kind = type(value)
    if kind is not float:
        if kind is not str and kind is not int and kind is not Decimal:
            return None
        try:
            value = float(value)
        except (ValueError, OverflowError):
            return None
    return value if math.isfinite(value) else None  # NaN or infinity: garbage


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _as_is(value: Any) -> Any:
    return value


_CONVERT: dict[str, Convert] = {
    "int": _int,
    "double": _double,
    "string": _string,
    "timestamp": _timestamp,
    "map": _as_is,
}
# root -> field -> converter; "stage" is its own root with the field "".
_CONVERTERS: dict[str, dict[str, Convert]] = {
    root: {
        path.partition(".")[2]: _CONVERT[kind.rstrip("?")]
        for path, kind in TYPES.items()
        if path.partition(".")[0] == root
    }
    for root in (*_MAPS, "stage")
}


@dataclass(frozen=True)
class Condition:
    source: str
    program: Any  # cel.Program (untyped extension)
    # Per variable used: the fields it reads, or None when it needs the whole value.
    reads: Mapping[str, frozenset[str] | None]
    # reads with each field's converter, looked up once rather than per match.
    _plan: tuple[tuple[str, tuple[tuple[str, Convert], ...] | None], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        plan = tuple(
            (name, None if fields is None or name not in _MAPS else _pairs(name, fields))
            for name, fields in self.reads.items()
        )
        object.__setattr__(self, "_plan", plan)

    def matches(self, context: Mapping[str, Any]) -> bool:
        """True only if the expression evaluates to true. A runtime error (a fact still
        null, a type mismatch) means no match: a condition cannot be half met."""
        given: dict[str, Any] = {}
        for name, pairs in self._plan:
            if name not in context:
                continue
            value = context[name]
            if pairs is not None and type(value) is dict:
                given[name] = {f: convert(value[f]) for f, convert in pairs if f in value}
            else:
                given[name] = _typed(name, value, self.reads[name])
        try:
            return self.program.execute(given) is True
        except (TypeError, ValueError, KeyError, RuntimeError, ArithmeticError):
            return False  # ArithmeticError: an int fact divided by a zero one, an overflow


def _pairs(name: str, fields: frozenset[str]) -> tuple[tuple[str, Convert], ...]:
    return tuple((f, _CONVERTERS[name].get(f, _as_is)) for f in sorted(fields))


def _typed(name: str, value: Any, fields: frozenset[str] | None) -> Any:
    """The value of a variable as the condition is given it: of a map, only `fields`
    (absent stays absent), each converted to its declared type."""
    convert = _CONVERTERS.get(name)
    if convert is None:
        return value
    if name == "stage":
        return convert[""](value)
    if not isinstance(value, Mapping):
        return value
    keys = value if fields is None else fields
    return {f: convert[f](value[f]) if f in convert else value[f] for f in keys if f in value}


# --- tokens ---------------------------------------------------------------------------


class Token(NamedTuple):
    kind: str  # ident, op, int, uint, double, string, bytes, bool, null
    text: str


_SPACE = re.compile(r"(?:\s+|//[^\n]*)+")
_STRING_START = re.compile(r"([rRbB]?)('''|\"\"\"|'|\")")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+[uU]?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR = re.compile(r"&&|\|\||[=!<>]=|[-+*/%<>!?:()\[\]{}.,]")
_KEYWORDS = {"true": "bool", "false": "bool", "null": "null", "in": "op"}


def tokenize(source: str) -> list[Token]:
    """CEL's tokens, for source that cel.compile accepted (anything unexpected becomes a
    one-character operator, so this never fails)."""
    tokens: list[Token] = []
    i = 0
    while i < len(source):
        if m := _SPACE.match(source, i):
            i = m.end()
        elif m := _STRING_START.match(source, i):
            end = _string_end(source, m.end(), m.group(2), raw=m.group(1) in ("r", "R"))
            kind = "bytes" if m.group(1) in ("b", "B") else "string"
            tokens.append(Token(kind, source[i:end]))
            i = end
        elif m := _NUMBER.match(source, i):
            text = m.group()
            if text[-1] in "uU":
                kind = "uint"
            elif "." in text or ("e" in text.lower() and not text.lower().startswith("0x")):
                kind = "double"
            else:
                kind = "int"
            tokens.append(Token(kind, text))
            i = m.end()
        elif m := _IDENT.match(source, i):
            tokens.append(Token(_KEYWORDS.get(m.group(), "ident"), m.group()))
            i = m.end()
        else:
            m = _OPERATOR.match(source, i)
            text = m.group() if m else source[i]
            tokens.append(Token("op", text))
            i += len(text)
    return tokens


def _string_end(source: str, i: int, quote: str, *, raw: bool) -> int:
    """The index after the closing quote; escapes are skipped except in raw strings."""
    while i < len(source):
        if source.startswith(quote, i):
            return i + len(quote)
        i += 2 if source[i] == "\\" and not raw else 1
    return len(source)


# --- what a condition names -----------------------------------------------------------


def _field_at(tokens: list[Token], i: int) -> tuple[str, int] | None:
    """The field reference (`facts.x`, `facts["x"]`, `stage`) starting at token i, as its
    path and the index after it; not a member of something else (`event.data.facts`)."""
    root = tokens[i]
    if root.kind != "ident" or root.text not in VARIABLES or (i and tokens[i - 1].text == "."):
        return None
    if root.text == "stage":
        return "stage", i + 1
    nxt = tokens[i + 1 : i + 4]
    if len(nxt) >= 2 and nxt[0].text == "." and nxt[1].kind == "ident":
        return f"{root.text}.{nxt[1].text}", i + 3
    if len(nxt) == 3 and nxt[0].text == "[" and nxt[1].kind == "string" and nxt[2].text == "]":
        return f"{root.text}.{_value(nxt[1].text)}", i + 4
    return None


def _reads(tokens: list[Token], variables: list[str]) -> dict[str, frozenset[str] | None]:
    """A variable whose every mention is a static field access (`facts.x`, `facts["x"]`)
    needs only those fields; any other mention (`size(facts)`, `"x" in facts`,
    `facts[stage]`) needs the whole map."""
    fields: dict[str, set[str]] = {v: set() for v in variables}
    whole: set[str] = set()
    for i, token in enumerate(tokens):
        if token.kind != "ident" or token.text not in fields or (i and tokens[i - 1].text == "."):
            continue
        found = _field_at(tokens, i)
        if found is None or token.text == "stage":
            whole.add(token.text)
        else:
            fields[token.text].add(found[0].partition(".")[2])
    return {v: None if v in whole or not fields[v] else frozenset(fields[v]) for v in variables}


# --- static check: a field compared with a literal ------------------------------------


class Literal(NamedTuple):
    kind: str  # int, uint, double, string, bytes, bool, null, timestamp, duration
    value: Any
    text: str


def _first(exc: Exception) -> str:
    """The first sentence of a CEL error (the rest is generic advice)."""
    return str(exc).split(". ")[0]


def _value(text: str) -> Any:
    """A literal's value as CEL reads it (escapes and all)."""
    return cel.compile(text).execute({})


def _literal(span: list[Token]) -> Literal | None:
    """The literal these tokens are exactly, if they are one."""
    text = "".join(t.text for t in span)
    if len(span) == 1 and span[0].kind in ("bool", "null"):
        return Literal(span[0].kind, None, text)
    simple = len(span) == 1 and span[0].kind in ("int", "uint", "double", "string", "bytes")
    negative = len(span) == 2 and span[0].text == "-" and span[1].kind in ("int", "double")
    if simple or negative:
        try:  # as a whole: -9223372036854775808 is an int, 9223372036854775808 is not
            return Literal(span[-1].kind, _value(text), text)
        except Exception:
            return None
    calls = ("timestamp", "duration")
    if (
        len(span) == 4
        and span[0].text in calls
        and [span[1].text, span[2].kind, span[3].text] == ["(", "string", ")"]
    ):
        call, text = span[0].text, f"{span[0].text}({span[2].text})"
        try:
            return Literal(call, _value(text), text)
        except Exception as exc:  # the CEL core raises RuntimeError with the parser's message
            example = '"2026-01-01T00:00:00Z"' if call == "timestamp" else '"24h"'
            raise ConditionError(
                f"{text} is not a valid {call} (like {call}({example})): {_first(exc)}"
            ) from exc
    return None


_RELATIONS = ("==", "!=", "<", "<=", ">", ">=", "in")
# What may stand before a comparison's left operand and after its right one for the
# operand to be exactly that field or literal (`!x`, `-x`, `x * 2`, `f(x).y` are not).
_BEFORE = ("&&", "||", "(", "?", ":", ",", "[", "{")
_AFTER = ("&&", "||", ")", "?", ":", ",", "]", "}", *_RELATIONS)
_NUMBERS = ("int", "uint", "double")
_DESCRIPTION = {
    "int": "a number (int)",
    "double": "a number (double)",
    "uint": "a number",
    "string": "a string",
    "bytes": "bytes",
    "bool": "a bool",
    "null": "null",
    "timestamp": "a timestamp",
    "duration": "a duration",
}


def _operand(tokens: list[Token], start: int, end: int) -> str | Literal | None:
    """A field path or a literal, when tokens[start:end] are exactly one."""
    if start < 0 or end > len(tokens) or start >= end:
        return None
    field = _field_at(tokens, start)
    if field is not None:
        return field[0] if field[1] == end else None
    return _literal(tokens[start:end])


def _left(tokens: list[Token], k: int) -> str | Literal | None:
    for size in (1, 2, 3, 4):
        start = k - size
        if start == 0 or (start > 0 and tokens[start - 1].text in _BEFORE):
            if (found := _operand(tokens, start, k)) is not None:
                return found
    return None


def _right(tokens: list[Token], k: int) -> list[str | Literal] | None:
    """The right operand(s) of the relation at k: one, or the elements of a literal
    list after `in`."""

    def ends(i: int) -> bool:
        return i == len(tokens) or tokens[i].text in _AFTER

    if tokens[k].text != "in":
        for size in (1, 2, 3, 4):
            if ends(k + 1 + size) and (found := _operand(tokens, k + 1, k + 1 + size)):
                return [found]
        return None
    if k + 1 >= len(tokens) or tokens[k + 1].text != "[":
        return None
    close = next((i for i in range(k + 2, len(tokens)) if tokens[i].text == "]"), None)
    if close is None or not ends(close + 1):
        return None
    items: list[str | Literal] = []
    for is_comma, group in itertools.groupby(tokens[k + 2 : close], lambda t: t.text == ","):
        if not is_comma:
            literal = _literal(list(group))
            if literal is None:
                return None  # not a list of literals: not judged
            items.append(literal)
    return items


def _judge(path: str, op: str, literal: Literal) -> str | None:
    """Why `path op literal` can never be true (or never false, for !=), if it cannot."""
    declared = TYPES[path]
    kind = declared.rstrip("?")
    verdict = "always true" if op == "!=" else "never true"
    if kind == "map":
        return None
    if literal.kind == "null":
        # `!= null` stays allowed: on a field absent when unknown (scores before the first
        # score, facts before the first transition) it is the natural "known" guard.
        if op not in ("==", "!=", "in"):
            return f"{path} {op} null: null has no order, this comparison is never true"
        if op == "!=" or declared.endswith("?"):
            return None
        return f"{path} is never null: {op} null is never true"
    same = kind == literal.kind or (kind in _NUMBERS and literal.kind in _NUMBERS)
    if not same:
        types = f"{path} is {_DESCRIPTION[kind]} and {literal.text} is {_DESCRIPTION[literal.kind]}"
        if kind == "timestamp" and literal.kind == "string":
            return f"{types}: compare with timestamp({literal.text})"
        return f"{types}: this comparison is {verdict}"
    if op not in ("==", "!=", "in"):
        return None
    values = ENUMS.get(path)
    if values and literal.value not in values:
        return f"{path} is one of {', '.join(values)}: {literal.value!r} never matches"
    if kind == "int" and literal.kind == "double" and not literal.value.is_integer():
        return f"{path} is a whole number: {literal.text} never matches"
    return None


def _check_comparisons(tokens: list[Token]) -> None:
    for k, token in enumerate(tokens):
        if token.kind != "op" or token.text not in _RELATIONS:
            continue
        left, right = _left(tokens, k), _right(tokens, k)
        if left is None or not right:
            continue
        for other in right:
            if (isinstance(left, str) and left not in TYPES) or (
                isinstance(other, str) and other not in TYPES
            ):
                continue  # traits: free-form, not typed
            if isinstance(left, str) and isinstance(other, Literal):
                problem = _judge(left, token.text, other)
            elif isinstance(left, Literal) and isinstance(other, str) and token.text != "in":
                problem = _judge(other, token.text, left)
            else:
                continue  # two fields or two literals: not judged
            if problem:
                raise ConditionError(problem)


# --- dynamic check: evaluate on typed sample customers --------------------------------

MAX_SAMPLES = 256


def _samples(path: str, literals: list[Literal]) -> list[Any]:
    """A low and a high value of the field's type, beyond every literal of the condition
    so guards like `facts.purchases_total > 3 && ...` let the right side run."""
    kind = TYPES[path].rstrip("?")
    numbers = [abs(lit.value) for lit in literals if lit.kind in _NUMBERS]
    bound = min(max(numbers, default=0) + 1, 2**53)
    if kind == "int":
        return [-math.ceil(bound), math.ceil(bound)]
    if kind == "double":
        return [-float(bound), float(bound)]
    if kind == "string":
        if path in ENUMS:
            return ["", *ENUMS[path]] if path == "stage" else list(ENUMS[path])
        # "" is the low value; the condition's own strings pass its equality guards.
        strings = {lit.value for lit in literals if lit.kind == "string"}
        return ["", *sorted(strings)[:3]]
    if kind == "timestamp":
        times = [lit.value for lit in literals if lit.kind == "timestamp"]
        low = min([*times, datetime(2000, 1, 1, tzinfo=UTC)]) - timedelta(days=1)
        high = max([*times, datetime(2100, 1, 1, tzinfo=UTC)]) + timedelta(days=1)
        return [low, high]
    return [{}]  # event.data: unknown keys, so accesses fail as missing, not as types


def _contexts(
    reads: Mapping[str, frozenset[str] | None], literals: list[Literal]
) -> Iterator[dict[str, Any]]:
    paths = ["stage"] if "stage" in reads else []
    for name in _MAPS:
        if name in reads:
            fields = reads[name]
            paths += [f"{name}.{f}" for f in (_FIELDS[name] if fields is None else sorted(fields))]
    values = [_samples(path, literals) for path in paths]
    # Typically 9 stages x 2 values per field: all combinations for up to 4 fields.
    if math.prod(len(v) for v in values) <= MAX_SAMPLES:
        rows: Iterator[tuple[Any, ...]] = itertools.product(*values)
    else:  # too many to try all: a fixed pseudo-random selection, the same every compile
        rng = random.Random(0)
        rows = (tuple(rng.choice(v) for v in values) for _ in range(MAX_SAMPLES))
    for row in rows:
        context = _context(dict(zip(paths, row, strict=True)))
        if "traits" in reads:
            context["traits"] = {}  # untyped: accesses fail as missing, not as types
        yield context


def _context(values: Mapping[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for path, value in values.items():
        root, _, field = path.partition(".")
        if root == "stage":
            context["stage"] = value
        else:
            context.setdefault(root, {})[field] = value
    return context


def _swapped(value: Any) -> Any:
    """The same number of the other numeric type (to tell which field mixes types)."""
    return float(value) if type(value) is int else int(value)


def _check_types(
    program: Any, reads: Mapping[str, frozenset[str] | None], tokens: list[Token]
) -> None:
    """Refuse a type error on customers whose every read field has a value of its type."""
    literals = [lit for i in range(len(tokens)) if (lit := _literal(tokens[i : i + 1]))]
    literals += [
        lit
        for i in range(len(tokens))
        if tokens[i].text in ("timestamp", "duration") and (lit := _literal(tokens[i : i + 4]))
    ]
    for context in _contexts(reads, literals):
        try:
            program.execute(context)
        except TypeError as exc:
            raise ConditionError(
                "condition mixes types, so it fails for every customer that gets this far: "
                f"{_first(exc)}{_culprit(program, context)}"
            ) from exc
        except Exception:  # a missing key in event.data, a division by zero: not a refusal
            continue


def _culprit(program: Any, context: dict[str, Any]) -> str:
    """Names the field when giving one numeric field the other numeric type makes the
    type error go away."""
    for root, value in context.items():
        if not isinstance(value, dict):
            continue
        for field, sample in value.items():
            if type(sample) not in (int, float):
                continue
            try:
                program.execute({**context, root: {**value, field: _swapped(sample)}})
            except TypeError:
                continue
            except Exception:
                pass
            path = f"{root}.{field}"
            if type(sample) is int:
                return f" ({path} is an int, here with a double: convert it with double({path}))"
            return f" ({path} is a double, here with an int: write the int as a double, 2 as 2.0)"
    return ""


def compile_condition(source: str, *, check_types: bool = True) -> Condition:
    """Compile and check a condition; ConditionError names what is wrong. `check_types`
    off for a condition saved before (it was checked then, maybe by older, laxer rules:
    it must keep running, not break the batch that loads it)."""
    if len(source) > MAX_LENGTH:
        raise ConditionError(f"condition is longer than {MAX_LENGTH} characters")
    try:
        program = cel.compile(source)
    except Exception as exc:  # the CEL core raises ValueError with the parser's message
        raise ConditionError(f"condition does not compile: {exc}") from exc
    variables = list(program.variables())
    unknown_vars = sorted(set(variables) - set(VARIABLES))
    if unknown_vars:
        raise ConditionError(
            f"unknown variable(s) {', '.join(unknown_vars)}; conditions see {', '.join(VARIABLES)}"
        )
    tokens = tokenize(source)
    for i in range(len(tokens)):
        found = _field_at(tokens, i)
        root, _, field = found[0].partition(".") if found else ("", "", "")
        if root in _FIELDS and field not in _FIELDS[root]:
            known = "see clm_events.facts.FACTS" if root == "facts" else ", ".join(_FIELDS[root])
            raise ConditionError(f"unknown {root} field '{field}' ({known})")
    reads = _reads(tokens, variables)
    if check_types:
        _check_comparisons(tokens)
        _check_types(program, reads, tokens)
    return Condition(source, program, reads)
