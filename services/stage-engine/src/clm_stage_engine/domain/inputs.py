"""What the stage engine keeps of each event: a compact, ordered input.

A customer's facts are a fold over their inputs sorted by (event time, source, id), so
they are a function of the *set* of events, whatever order the events arrived in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from clm_events.envelope import Event

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND

PURCHASE = "purchase.completed"
REFUND = "purchase.refunded"
SUBSCRIPTION_STARTED = "billing.subscription_started"
INVOICE_PAID = "billing.invoice_paid"
PAYMENT_FAILED = "billing.payment_failed"
SUBSCRIPTION_CANCELLED = "billing.subscription_cancelled"
TICKET_OPENED = "support.ticket_opened"
TICKET_RESOLVED = "support.ticket_resolved"
NPS = "support.nps_submitted"
SIGNED_UP = "web.signed_up"
IDENTIFIED = "web.identified"
PAGE_VIEWED = "web.page_viewed"
TRACKED = "web.tracked"
# Stored by earlier releases, which took scores as inputs; ignored when read back (the
# stage engine evaluates scores itself, see domain.facts).
SCORE = "lifecycle.score_updated"

TRAITS = ("email", "name", "timezone", "locale")
_TRAIT_LIMIT = 256


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch: exact, and cheap to compare and store."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class Input:
    at: int  # event time, microseconds since the epoch (UTC)
    source: str
    id: str
    kind: str  # the event type
    data: dict[str, Any]  # only what the facts need

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)

    @property
    def order(self) -> tuple[int, str, str]:
        return (self.at, self.source, self.id)

    def to_json(self) -> list[Any]:
        return [self.at, self.source, self.id, self.kind, self.data]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Input:
        return cls(raw[0], raw[1], raw[2], raw[3], raw[4])  # our own JSON: types are right


def _traits(*sources: dict[str, Any] | None) -> dict[str, str]:
    traits: dict[str, str] = {}
    for source in sources:
        for name in TRAITS:
            value = (source or {}).get(name)
            if isinstance(value, str) and value:
                traits[name] = value[:_TRAIT_LIMIT]
    return traits


def from_event(event: Event) -> Input | None:
    """The input an event contributes, or None for types the stage engine ignores."""
    d: dict[str, Any] = event.data.__dict__  # declared fields, already validated
    kind = event.type
    compact: dict[str, Any]
    match kind:
        case "purchase.completed" | "purchase.refunded":
            # The order ties a refund to its purchase in the score summary (scoring's).
            compact = {"amount": float(d["amount"]), "order": d["order_id"]}
        case "billing.invoice_paid":
            compact = {"amount": float(d["amount"]), "invoice": d["invoice_id"]}
        case "billing.payment_failed":
            compact = {"invoice": d["invoice_id"]}
        case "billing.subscription_started" | "billing.subscription_cancelled":
            compact = {"subscription": d["subscription_id"]}
        case "support.ticket_opened":
            compact = {"ticket": d["ticket_id"], "priority": d["priority"] or "normal"}
        case "support.ticket_resolved":
            compact = {"ticket": d["ticket_id"]}
        case "support.nps_submitted":
            compact = {"score": d["score"]}
        case "web.signed_up":
            compact = {"traits": _traits(d.get("traits"), d)}
        case "web.identified":
            compact = {"traits": _traits(d.get("traits"))}
        case "web.page_viewed" | "web.screen_viewed":
            compact = {}
        case "web.tracked":
            compact = {"name": d["name"]}
        case "identity.linked":
            # Kept with the known customer's inputs; the anonymous id's own history is
            # merged in when identity resolution reaches the stage engine.
            compact = {"anonymous_id": d["anonymous_id"]}
        case _:
            return None
    return Input(to_us(event.time), event.source, event.id, kind, compact)
