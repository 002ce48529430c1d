"""The customer as campaigns sees it, kept from the topics: traits, stage, facts, scores
and recent purchases; and what each event means for triggers (an occasion)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clm_events.facts import FACTS

RECENT_PURCHASES = 10
TRAIT_FACTS = ("email", "name", "timezone", "locale")
MAX_TRAITS = 100
_SCORE_FACTS = ("clv", "churn_probability")  # facts that the latest score overrides


@dataclass
class CustomerState:
    customer_id: str
    stage: str | None = None
    stage_at: datetime | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    scores_at: datetime | None = None
    recent_purchases: list[dict[str, Any]] = field(default_factory=list)
    stage_transition: str | None = None  # the transition that set `stage`
    stage_entry: int | None = None  # which entry into the stage that was
    segments: dict[str, int] = field(default_factory=dict)  # segment id -> version

    @property
    def timezone(self) -> str | None:
        tz = self.traits.get("timezone") or self.facts.get("timezone")
        return tz if isinstance(tz, str) else None

    def all_facts(self) -> dict[str, Any]:
        """Every fact name conditions may use, null when unknown: stage-engine facts,
        traits seen on web events, and the latest scores."""
        out: dict[str, Any] = dict.fromkeys(FACTS)
        out.update({k: v for k, v in self.facts.items() if k in FACTS})
        for name in TRAIT_FACTS:
            if self.traits.get(name) is not None:
                out[name] = self.traits[name]
        for name in _SCORE_FACTS:
            if self.scores.get(name) is not None:
                out[name] = self.scores[name]
        return out

    def some_facts(self, names: Iterable[str]) -> dict[str, Any]:
        """all_facts() for these names only (a pass over every customer reads a few)."""
        out: dict[str, Any] = {}
        for name in names:
            if name in TRAIT_FACTS and self.traits.get(name) is not None:
                out[name] = self.traits[name]
            elif name in _SCORE_FACTS and self.scores.get(name) is not None:
                out[name] = self.scores[name]
            elif name in FACTS:
                out[name] = self.facts.get(name)
        return out

    def as_template(self) -> dict[str, Any]:
        return {
            "id": self.customer_id,
            "stage": self.stage,
            "stage_since": self.stage_at.isoformat() if self.stage_at else None,
            "traits": dict(self.traits),
            "facts": self.all_facts(),
            "scores": dict(self.scores),
            "recent_purchases": list(self.recent_purchases),
        }


@dataclass(frozen=True)
class Occasion:
    """What happened to the customer, as triggers match it."""

    event_id: str
    event_source: str
    event_type: str
    time: datetime
    data: dict[str, Any]
    from_stage: str | None = None
    to_stage: str | None = None
    previous_scores: dict[str, Any] | None = None
    # Of a transition (or its retraction): its id, which entry into to_stage it is, and
    # whether a backfill published it (and may have it acted on).
    transition_id: str | None = None
    entry: int | None = None
    backfill: bool = False
    send_actions: bool = True

    def as_context(self) -> dict[str, Any]:
        return {
            "id": self.event_id,
            "source": self.event_source,
            "type": self.event_type,
            "time": self.time.isoformat(),
            "data": self.data,
            # A named event's name and properties at the top, as a marketer reads them:
            # event.name == "Product Viewed" && event.properties.category == "shoes".
            "name": name if isinstance(name := self.data.get("name"), str) else None,
            "properties": p if isinstance(p := self.data.get("properties"), dict) else {},
        }


def _merge_traits(state: CustomerState, traits: dict[str, Any]) -> None:
    for key, value in traits.items():
        if value is None or not isinstance(key, str):
            continue
        if key in state.traits or len(state.traits) < MAX_TRAITS:
            state.traits[key] = value


def apply(
    state: CustomerState,
    *,
    event_id: str,
    source: str,
    event_type: str,
    time: datetime,
    data: dict[str, Any],
) -> Occasion:
    """Update the projection with one event (JSON `data`) and return its occasion.

    Late events never overwrite newer state (stage and scores keep the latest by event
    time), but they still are occasions: the transition did happen.
    """
    occasion_kwargs: dict[str, Any] = {}
    if event_type == "lifecycle.stage_changed":
        at = datetime.fromisoformat(data["at"]) if isinstance(data.get("at"), str) else time
        backfill = data.get("origin") == "backfill"
        occasion_kwargs = {
            "from_stage": data.get("from_stage"),
            "to_stage": data.get("to_stage"),
            "transition_id": data.get("transition_id") or event_id,
            "entry": data.get("entry"),
            "backfill": backfill,
            "send_actions": bool(data.get("send_actions")) if backfill else True,
        }
        if state.stage_at is None or at >= state.stage_at:
            state.stage, state.stage_at = data.get("to_stage"), at
            state.stage_transition = occasion_kwargs["transition_id"]
            state.stage_entry = occasion_kwargs["entry"]
            facts = data.get("facts") or {}
            state.facts = {k: v for k, v in facts.items() if k in FACTS}
            _merge_traits(state, {k: facts.get(k) for k in TRAIT_FACTS})
    elif event_type == "lifecycle.transition_retracted":
        tid = data.get("transition_id")
        occasion_kwargs = {"transition_id": tid, "to_stage": data.get("to_stage")}
        if tid is not None and tid == state.stage_transition:
            # The stage came from a transition that no longer stands: the customer is back
            # in the stage it left, until what replaced it arrives (right behind, in order).
            state.stage, state.stage_at = data.get("from_stage"), None
            state.stage_transition = state.stage_entry = None
    elif event_type == "lifecycle.score_updated":
        occasion_kwargs = {"previous_scores": dict(state.scores)}
        if state.scores_at is None or time >= state.scores_at:
            state.scores = dict(data)
            state.scores_at = time
    elif event_type == "web.signed_up":
        _merge_traits(state, {"email": data.get("email"), "name": data.get("name")})
        _merge_traits(state, data.get("traits") or {})
    elif event_type == "web.identified":
        _merge_traits(state, data.get("traits") or {})
    elif event_type == "purchase.completed":
        purchase = {
            "order_id": data.get("order_id"),
            "amount": data.get("amount"),
            "currency": data.get("currency"),
            "time": time.isoformat(),
        }
        if data.get("items"):
            purchase["items"] = data["items"]
        kept = [p for p in state.recent_purchases if p.get("order_id") != purchase["order_id"]]
        kept.append(purchase)
        kept.sort(key=lambda p: str(p.get("time")), reverse=True)
        state.recent_purchases = kept[:RECENT_PURCHASES]
    return Occasion(
        event_id=event_id,
        event_source=source,
        event_type=event_type,
        time=time,
        data=data,
        **occasion_kwargs,
    )


def merge(known: CustomerState, anonymous: CustomerState) -> None:
    """Fold what was known of an anonymous visitor into the customer they turned out to
    be: the customer's own traits and scores win, the visitor's fill the gaps, purchases
    are joined. Stage and facts are left alone: the stage engine publishes the customer's
    rebuilt transitions right after the merge, and retracts the visitor's. Merging twice
    changes nothing."""
    for key, value in anonymous.traits.items():
        if known.traits.get(key) is None and value is not None:
            _merge_traits(known, {key: value})
    if not known.scores and anonymous.scores:
        known.scores, known.scores_at = dict(anonymous.scores), anonymous.scores_at
    orders = {p.get("order_id") for p in known.recent_purchases}
    joined = known.recent_purchases + [
        p for p in anonymous.recent_purchases if p.get("order_id") not in orders
    ]
    joined.sort(key=lambda p: str(p.get("time")), reverse=True)
    known.recent_purchases = joined[:RECENT_PURCHASES]
