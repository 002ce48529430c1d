"""What an authenticated request may publish: valid v1 producer events of the caller's
source, each within the size limit. One item of a request (a CloudEvent, a Segment
message) gives zero or more events; an item is admitted whole or not at all."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from clm_events.catalog import DERIVED_TYPES, EventType
from clm_events.envelope import Event, EventValidationError, encode_structured
from clm_events.storable import UNSTORABLE

T = TypeVar("T")

_PRODUCER_TYPES = ", ".join(t for t in EventType if t not in DERIVED_TYPES)


class Reason(StrEnum):
    """Why an event was refused; also the `reason` label of the rejection metric."""

    invalid = "invalid"
    unstorable_text = UNSTORABLE  # U+0000 and the like: no service could store the event
    derived_type = "derived_type"
    too_large = "too_large"
    forbidden_source = "forbidden_source"


# The status of a refused request follows its most serious problem.
STATUS = {Reason.too_large: 413, Reason.forbidden_source: 403}
_SEVERITY = [
    Reason.too_large,
    Reason.forbidden_source,
    Reason.derived_type,
    Reason.unstorable_text,
    Reason.invalid,
]


@dataclass(frozen=True)
class Problem:
    index: int | None  # position in the batch; None for a single event
    path: str
    reason: str
    kind: Reason
    event_type: str = "unknown"

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"path": self.path, "reason": self.reason}
        return body if self.index is None else {"index": self.index, **body}


@dataclass(frozen=True)
class Admitted:
    position: int  # of the item it came from in the request
    event: Event
    value: bytes  # the structured CloudEvent published to the domain topic


@dataclass(frozen=True)
class Verdict:
    admitted: list[Admitted]
    problems: list[Problem]

    @property
    def status(self) -> int:
        if not self.problems:
            return 202
        worst = min(self.problems, key=lambda p: _SEVERITY.index(p.kind)).kind
        return STATUS.get(worst, 422)

    @property
    def refused(self) -> dict[int, list[Problem]]:
        """The problems of each refused item, by its position in the request."""
        by_position: dict[int, list[Problem]] = {}
        for p in self.problems:
            by_position.setdefault(p.index or 0, []).append(p)
        return by_position

    def summary(self, total: int) -> str:
        refused = len({p.index for p in self.problems})
        if self.problems[0].index is None:
            return "event refused: " + "; ".join(
                f"{p.path}: {p.reason}" if p.path else p.reason for p in self.problems[:5]
            )
        return f"{refused} of {total} events refused; nothing was published"


def source_allowed(event_source: str, key_source: str) -> bool:
    """A key for source `shop` may publish `shop` and anything under `shop/`."""
    return event_source == key_source or event_source.startswith(key_source + "/")


def parse_each(
    items: Iterable[T], parse: Callable[[T], Sequence[Event]]
) -> list[Sequence[Event] | EventValidationError]:
    results: list[Sequence[Event] | EventValidationError] = []
    for item in items:
        try:
            results.append(parse(item))
        except EventValidationError as exc:
            results.append(exc)
    return results


def admit(
    parsed: Sequence[Sequence[Event] | EventValidationError],
    *,
    key_source: str,
    max_event_bytes: int,
    batch: bool,
) -> Verdict:
    admitted: list[Admitted] = []
    problems: list[Problem] = []
    for i, result in enumerate(parsed):
        index = i if batch else None
        if isinstance(result, EventValidationError):
            kind = Reason.unstorable_text if result.kind == UNSTORABLE else Reason.invalid
            problems += [Problem(index, e.path, e.reason, kind) for e in result.errors]
            continue
        for event in result:
            checked = _check(event, index, key_source, max_event_bytes)
            if isinstance(checked, Problem):
                problems.append(checked)
            else:
                admitted.append(Admitted(i, event, checked))
    return Verdict(admitted, problems)


def _check(event: Event, index: int | None, key_source: str, limit: int) -> Problem | bytes:
    """The event's problem, or its encoded form if it has none."""
    event_type = str(event.type)
    if event.type in DERIVED_TYPES:
        return Problem(
            index,
            "type",
            f"'{event_type}' is published by CLM itself; producers may send: " + _PRODUCER_TYPES,
            Reason.derived_type,
            event_type,
        )
    if not source_allowed(event.source, key_source):
        return Problem(
            index,
            "source",
            f"this key may only publish events of source '{key_source}' "
            f"(or '{key_source}/...'), not '{event.source[:64]}'",
            Reason.forbidden_source,
            event_type,
        )
    value = encode_structured(event)
    if len(value) > limit:
        return Problem(
            index,
            "",
            f"event is {len(value)} bytes; the limit is {limit}",
            Reason.too_large,
            event_type,
        )
    return value
