"""The simple part of CEL, parsed: `||`, `&&`, `!(...)`, parentheses, `true`/`false`, a
bare field, and a field (`stage`, `traits.x`, `facts.x`, `scores.x`) compared with a
literal (`==`, `!=`, `<`, `<=`, `>`, `>=`, `in [...]`). Most segment conditions are only
this; they are evaluated without the CEL engine (natively in Python, or as SQL), which
for these is exact and many times cheaper. Anything else parses to None and stays CEL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clm_campaigns.domain.conditions import Token, _value, tokenize

COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
_SWAP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
ROOTS = ("traits", "facts", "scores")


@dataclass(frozen=True)
class Literal:
    kind: str  # string, number, bool, null
    value: Any


@dataclass(frozen=True)
class Field:
    root: str  # stage, traits, facts, scores
    name: str  # "" for stage


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str  # one of COMPARISONS
    literal: Literal


@dataclass(frozen=True)
class In:
    field: Field
    literals: tuple[Literal, ...]


@dataclass(frozen=True)
class Bare:
    field: Field  # true or false when it is a bool, an error otherwise


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


Node = Compare | In | Bare | Const | Not | And | Or


class _Unsupported(Exception):
    pass


def parse(source: str) -> Node | None:
    """The condition as a tree, or None when it uses anything beyond the simple part."""
    parser = _Parser(tokenize(source))
    try:
        node = parser.disjunction()
    except _Unsupported:
        return None
    return node if parser.i == len(parser.tokens) else None


def fields(node: Node) -> set[Field]:
    """Every field the tree reads."""
    if isinstance(node, Compare | In | Bare):
        return {node.field}
    if isinstance(node, Not):
        return fields(node.operand)
    if isinstance(node, And | Or):
        return set().union(*(fields(p) for p in node.parts))
    return set()


class _Parser:
    """Recursive descent over CEL's tokens (CEL's precedence: || < && < relations < !)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens, self.i = tokens, 0

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == text:
            self.i += 1
            return True
        return False

    def disjunction(self) -> Node:
        parts = [self.conjunction()]
        while self.take("||"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.unary()]
        while self.take("&&"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Node:
        if self.take("!"):
            token = self.peek()
            if token is None or token.text not in ("(", "!"):
                raise _Unsupported("! of a field")
            return Not(self.unary())
        if self.take("("):
            inner = self.disjunction()
            if not self.take(")"):
                raise _Unsupported("unbalanced parentheses")
            return inner
        token = self.peek()
        if token is not None and token.kind == "bool" and not self._relation_next(1):
            self.i += 1
            return Const(token.text == "true")
        return self.relation()

    def _relation_next(self, offset: int) -> bool:
        token = self.peek(offset)
        return token is not None and token.text in (*COMPARISONS, "in")

    def relation(self) -> Node:
        left = self.operand()
        token = self.peek()
        if token is None or token.text not in (*COMPARISONS, "in"):
            if isinstance(left, Field):
                return Bare(left)
            raise _Unsupported("a literal alone")
        self.i += 1
        if token.text == "in":
            if not isinstance(left, Field):
                raise _Unsupported("a literal in a list")
            return In(left, tuple(self.list_literal()))
        right = self.operand()
        if isinstance(left, Field) and isinstance(right, Literal):
            field, op, literal = left, token.text, right
        elif isinstance(left, Literal) and isinstance(right, Field):
            field, op, literal = right, _SWAP[token.text], left
        else:
            raise _Unsupported("not a field against a literal")
        if op not in ("==", "!=") and literal.kind not in ("number", "string"):
            raise _Unsupported("a bool or null ordered")
        return Compare(field, op, literal)

    def operand(self) -> Field | Literal:
        token = self.peek()
        if token is None:
            raise _Unsupported("missing operand")
        return self.field() if token.kind == "ident" else self.literal()

    def field(self) -> Field:
        root = self.tokens[self.i].text
        if root == "stage":
            self.i += 1
            return Field("stage", "")
        dot, name, after = self.peek(1), self.peek(2), self.peek(3)
        if root not in ROOTS or dot is None or dot.text != "." or name is None:
            raise _Unsupported(f"{root}: not a field")
        if name.kind != "ident" or (after is not None and after.text in (".", "[", "(")):
            raise _Unsupported("a member of a field")
        self.i += 3
        return Field(root, name.text)

    def literal(self) -> Literal:
        token = self.peek()
        negative = token is not None and token.text == "-"
        if negative:
            self.i += 1
            token = self.peek()
        if token is None:
            raise _Unsupported("missing literal")
        self.i += 1
        if token.kind in ("int", "double") and not token.text.lower().startswith("0x"):
            number = float(token.text) if token.kind == "double" else int(token.text)
            if abs(number) > 2**53:  # compared as doubles in SQL, exact only this far
                raise _Unsupported("a number beyond 2**53")
            return Literal("number", -number if negative else number)
        if negative:
            raise _Unsupported("- of something else")
        if token.kind == "string":
            value = _value(token.text)  # escapes and all, as CEL reads it
            if not isinstance(value, str):
                raise _Unsupported("not a string")
            return Literal("string", value)
        if token.kind == "bool":
            return Literal("bool", token.text == "true")
        if token.kind == "null":
            return Literal("null", None)
        raise _Unsupported(f"a {token.kind} literal")

    def list_literal(self) -> list[Literal]:
        if not self.take("["):
            raise _Unsupported("in: not a list literal")
        out: list[Literal] = []
        while not self.take("]"):
            out.append(self.literal())
            if not self.take(","):
                if not self.take("]"):
                    raise _Unsupported("malformed list")
                break
        return out
