"""What every service can store: the rule the envelope applies to every event it parses.

PostgreSQL text and jsonb refuse U+0000, an unpaired surrogate (U+D800-U+DFFF, which JSON's
`\\ud800` escapes produce) cannot be encoded as UTF-8 at all, and jsonb has no infinite
numbers (`1e400` decodes to one). An event carrying any of these anywhere, a dict key
included, would be accepted and then fail in every service that stores it, so the gate
refuses it and names where.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

# The `kind` of an EventValidationError raised by this rule, and the dead-letter reason kind.
UNSTORABLE = "unstorable_text"


def bad_char(text: str) -> str | None:
    """The first character of `text` that PostgreSQL text cannot hold, or None."""
    if "\x00" in text:
        return "\x00"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def printable(text: str) -> str:
    """`text` with unstorable characters written as `\\uXXXX`: safe to echo in a reason that
    is itself stored (dead-letter rows) or logged."""
    if bad_char(text) is None:
        return text
    return "".join(f"\\u{ord(c):04x}" if bad_char(c) else c for c in text)


def is_storable(value: Any) -> bool:
    """Fast check of a decoded JSON value (no paths built); the common case is True.

    Plain loops and exact type checks: it runs on every event every service decodes."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or bad_char(value) is None)
    if kind is dict:
        for key, child in value.items():
            if type(key) is str and ("\x00" in key or not key.isascii()) and bad_char(key):
                return False
            if type(child) is not str:
                if not is_storable(child):
                    return False
            elif "\x00" in child or not (child.isascii() or bad_char(child) is None):
                return False
        return True
    if kind is list or kind is tuple:
        for child in value:
            if not is_storable(child):
                return False
        return True
    if kind is float:
        return math.isfinite(value)
    if isinstance(value, str | dict | list | tuple | float):  # subclasses: the slow path
        return next(unstorable(value), None) is None
    return True


def _reason(char: str, what: str) -> str:
    if char == "\x00":
        return f"{what} contains U+0000 (NUL), which cannot be stored as text"
    return (
        f"{what} contains U+{ord(char):04X}, an unpaired surrogate, which is not valid Unicode text"
    )


def unstorable(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, reason) of every unstorable string, key or number in `value`."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:  # iterative: a deeply nested payload must not exhaust the Python stack
        where, item = stack.pop()
        if isinstance(item, str):
            char = bad_char(item)
            if char is not None:
                yield where, _reason(char, "text")
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                name = printable(str(key))
                child_path = f"{where}.{name}" if where else name
                char = bad_char(key) if isinstance(key, str) else None
                if char is not None:
                    yield child_path, _reason(char, "the name")
                children.append((child_path, child))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            items = [(f"{where}.{i}" if where else str(i), c) for i, c in enumerate(item)]
            stack.extend(reversed(items))
        elif isinstance(item, float) and not math.isfinite(item):
            yield where, "number is out of range (not finite)"
