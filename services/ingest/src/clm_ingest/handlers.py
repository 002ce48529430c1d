"""What ingest does with each event that arrives on the inbound topic."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery, Handler
from clm_events.outbox import add_event
from clm_events.topics import Topics
from clm_ingest.models import outbox


def inbound_gate(topics: Topics) -> Handler:
    """Route validated inbound events to their domain topic, keyed by customer.

    Invalid messages never reach here: the runner dead-letters what does not decode. A type
    with no domain topic (e.g. a derived `lifecycle.*` event) is refused and dead-lettered.
    """

    async def route(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await add_event(session, outbox, topics.domain(d.event.type), d.event)

    return route
