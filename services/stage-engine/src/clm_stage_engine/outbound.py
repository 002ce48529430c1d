"""What the stage engine publishes: transitions, their retractions and identity merges,
as CloudEvents built straight from our own values (byte for byte what
`clm_events.envelope.encode_structured` gives; a unit test holds them equal)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from clm_stage_engine.domain.inputs import from_us
from clm_stage_engine.domain.timeline import Outcome, Timeline, Transition

SOURCE = "clm/stage-engine"


def _rfc3339(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


def publications(tl: Timeline, out: Outcome, origin: Origin | None) -> list[tuple[str, bytes]]:
    """(event id, event) of what a step tells consumers, in order: the retractions first,
    so a consumer reads them before what replaced them."""
    gone, published = out.news(tl.customer, tl.history)
    messages = []
    for t in gone:
        event_id = tl.retract(t)
        messages.append((event_id, retracted_event(tl.customer, event_id, t)))
    for position in published:
        t = tl.history[position]
        tid = t.id(tl.customer)
        event_id = tl.publication_id(tid)
        entry = tl.entry(position)
        value = stage_changed_event(
            tl.customer, event_id, t, transition_id=tid, entry=entry, origin=origin
        )
        messages.append((event_id, value))
    return messages


@dataclass(frozen=True)
class Origin:
    """Where published transitions come from, when not from live processing."""

    kind: Literal["backfill"] = "backfill"
    send_actions: bool = False  # a backfill asked campaigns to act on its transitions


def stage_changed_event(
    customer: str,
    event_id: str,
    t: Transition,
    *,
    transition_id: str | None = None,
    entry: int | None = None,
    origin: Origin | None = None,
) -> bytes:
    """The `lifecycle.stage_changed` CloudEvent, byte for byte what encode_structured gives
    for the same new_event (a unit test holds them equal). Building and validating a
    pydantic model per transition cost as much as evaluating the customer; our own
    values need no validation."""
    at = _rfc3339(t.at)
    data: dict[str, Any] = {} if t.from_stage is None else {"from_stage": t.from_stage}
    data |= {
        "to_stage": t.to_stage,
        "at": at,
        "cause": t.cause,
        "facts": t.facts or {},
        "model_version": t.model_version,
    }
    if transition_id is not None:
        data["transition_id"] = transition_id
    if entry is not None:
        data["entry"] = entry
    if origin is not None:
        data |= {"origin": origin.kind, "send_actions": origin.send_actions}
    if t.event is not None:
        data["cause_event"] = {"source": t.event[0], "id": t.event[1], "type": t.event[2]}
    return _event_bytes(customer, event_id, "lifecycle.stage_changed", at, data)


def retracted_event(customer: str, event_id: str, t: Transition) -> bytes:
    """`lifecycle.transition_retracted`: a published transition a late event rewrote out
    of the history (same byte-for-byte rule as stage_changed_event)."""
    at = _rfc3339(t.at)
    data: dict[str, Any] = {"transition_id": t.id(customer)}
    if t.from_stage is not None:
        data["from_stage"] = t.from_stage
    data |= {"to_stage": t.to_stage, "at": at, "cause": t.cause}
    return _event_bytes(customer, event_id, "lifecycle.transition_retracted", at, data)


def _event_bytes(customer: str, event_id: str, kind: str, at: str, data: dict[str, Any]) -> bytes:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": kind,
        "subject": customer,
        "time": at,
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def merged_event(customer: str, anonymous_id: str, at: int) -> tuple[str, bytes]:
    """(event id, `lifecycle.customers_merged`): what was held under `anonymous_id` is the
    customer's now. The id is the pair's, so a replayed merge is a repeat."""
    key = json.dumps([customer, anonymous_id]).encode()
    event_id = "merge-" + hashlib.sha256(key).hexdigest()[:32]
    data = {"anonymous_id": anonymous_id}
    kind = "lifecycle.customers_merged"
    return event_id, _event_bytes(customer, event_id, kind, _rfc3339(at), data)
