"""Which anonymous id may be linked to which known customer: the guards Segment
documents against bad merges, as pure rules (the graph itself is in the database).

A link is one level deep: an anonymous id points at one customer, and a customer id is
never itself linked once other ids point at it, so resolving an id is one lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

# Placeholders that code writes when it has no id: linking them would merge every
# visitor who ever sent one into one customer.
BLOCKED_IDS = frozenset(
    {"-1", "null", "nil", "none", "undefined", "anonymous", "unknown", "nan", "n/a"}
    | {"[object object]"}  # what JavaScript writes for an object where a string belongs
)
_ZEROS_AND_DASHES = re.compile(r"[0-]*")  # "", "0", "0000", "-", the nil UUID


class Outcome(StrEnum):
    """What a link request came to; also the metric's labels (outcome, reason)."""

    linked = "linked"
    unchanged = "unchanged"  # the same link again (a retry, or every identify of a session)
    blocked_id = "blocked_id"
    same_id = "same_id"
    already_linked = "already_linked"
    has_linked_ids = "has_linked_ids"
    customer_limit = "customer_limit"
    erased = "erased"  # one of the ids was erased (a privacy request): nothing links to it

    @property
    def refused(self) -> bool:
        return self not in (Outcome.linked, Outcome.unchanged)


REASONS = {
    Outcome.blocked_id: "the id is a placeholder ('0', '-1', 'null', 'anonymous', ...), "
    "which is never linked",
    Outcome.same_id: "the anonymous id is the customer id",
    Outcome.already_linked: "the anonymous id is already linked to another customer",
    Outcome.has_linked_ids: "other ids are linked to this anonymous id; customers are not "
    "merged into each other",
    Outcome.customer_limit: "the customer already has the most anonymous ids allowed",
    Outcome.erased: "one of the ids was erased; its events are dropped until the erasure expires",
}


@dataclass(frozen=True)
class Facts:
    """What the graph holds about one proposed link."""

    linked_to: str | None  # the customer the anonymous id is linked to already
    has_linked_ids: bool  # other ids are linked to the anonymous id
    absorbed: int  # anonymous ids the customer has


@dataclass(frozen=True)
class Guards:
    max_anonymous_ids: int = 100
    blocked: frozenset[str] = frozenset()

    @classmethod
    def of(cls, max_anonymous_ids: int, blocked: Iterable[str] = ()) -> Guards:
        return cls(max_anonymous_ids, frozenset(b.strip().casefold() for b in blocked))

    def is_blocked(self, value: str) -> bool:
        v = value.strip().casefold()
        return v in BLOCKED_IDS or v in self.blocked or _ZEROS_AND_DASHES.fullmatch(v) is not None

    def precheck(self, anonymous_id: str, customer_id: str) -> Outcome | None:
        """A refusal that needs no lookup, or None."""
        if self.is_blocked(anonymous_id) or self.is_blocked(customer_id):
            return Outcome.blocked_id
        if anonymous_id == customer_id:
            return Outcome.same_id
        return None

    def decide(self, customer_id: str, facts: Facts) -> Outcome:
        """Link, keep, or refuse, given what the graph holds (precheck passed)."""
        if facts.linked_to == customer_id:
            return Outcome.unchanged
        if facts.linked_to is not None:
            return Outcome.already_linked
        if facts.has_linked_ids:
            return Outcome.has_linked_ids
        if facts.absorbed >= self.max_anonymous_ids:
            return Outcome.customer_limit
        return Outcome.linked
