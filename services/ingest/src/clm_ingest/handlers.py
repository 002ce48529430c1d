"""What ingest does with the events that arrive on the inbound topic."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.catalog import DERIVED_TYPES, topic_domain
from clm_events.consumer import Decoder, Delivery, Handler
from clm_events.envelope import Event, EventValidationError, FieldError, encode_structured
from clm_events.outbox import CONTENT_TYPE
from clm_events.topics import Topics
from clm_ingest import repository
from clm_ingest.domain.identity import Outcome
from clm_ingest.identity import IdentityGraph


def inbound_decoder(max_event_bytes: int, decode: Decoder) -> Decoder:
    """The runner's decoder plus the rules HTTP senders meet: an oversized record (the
    broker does not enforce a size) and a derived type are dead-lettered like any invalid
    one, each with its own reason kind, not as a handler error (which pages the team)."""

    def decode_gated(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> Event:
        size = len(value or b"")
        if size > max_event_bytes:
            raise EventValidationError(
                [FieldError("", f"event is {size} bytes; the limit is {max_event_bytes}")],
                kind="too_large",
            )
        event = decode(headers, value)
        if event.type in DERIVED_TYPES:
            reason = f"'{event.type}' is published by CLM itself; producers may not send it"
            raise EventValidationError([FieldError("type", reason)], kind="derived_type")
        return event

    return decode_gated


def inbound_gate(topics: Topics, graph: IdentityGraph) -> Handler:
    """Route validated inbound events to their domain topic, keyed by customer, through
    the outbox (so a crash between commit and publish loses nothing); identity links
    are recorded and subjects resolved as on the HTTP path, in the same transaction.

    Undecodable messages never reach here: the runner dead-letters what the decoder
    refuses (invalid, unstorable, too large, derived types). A link a guard refuses is
    counted and not routed.
    """

    async def route(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        resolved = await graph.resolve(session, [d.event for d in deliveries])
        rows = [_routed(topics, e) for e in resolved if not isinstance(e, Outcome)]
        await repository.queue_routed(session, rows)

    return route


def _routed(topics: Topics, event: Event) -> dict[str, Any]:
    return {
        "topic": topics.domain(topic_domain(event.type)),
        "key": event.subject.encode(),
        # Re-encoded: binary-mode input leaves as structured JSON like everything else.
        "value": encode_structured(event),
        "headers": [[CONTENT_TYPE[0], CONTENT_TYPE[1].decode()]],
        "event_id": event.id,
    }
