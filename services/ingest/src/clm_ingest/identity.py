"""Identity resolution at the gate: record each `identity.linked` the guards allow, and
give later events of a linked anonymous id the known customer as subject.

Both ways in (HTTP and the inbound topic) call `IdentityGraph.resolve` inside the
transaction that also dedupes the events, so a link and the events it rewrote commit
together or not at all. Events published before a link keep the anonymous id as
subject; the services that hold their state merge it when the link event reaches them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.envelope import Event, IdentityLinkedEvent
from clm_events.privacy import Tombstones
from clm_ingest import metrics, repository
from clm_ingest.domain.identity import Guards, Outcome

log = logging.getLogger(__name__)


def with_subject(event: Event, customer_id: str) -> Event:
    """The event under the customer's id, its own subject kept as the `anonymousid`
    extension (unless it carries one already)."""
    extra = {} if (event.model_extra or {}).get("anonymousid") else {"anonymousid": event.subject}
    return event.model_copy(update={"subject": customer_id, **extra})


class IdentityGraph:
    def __init__(self, guards: Guards, tombstones: Tombstones) -> None:
        self.guards = guards
        self.tombstones = tombstones

    async def resolve(
        self, session: AsyncSession, events: Sequence[Event]
    ) -> list[Event | Outcome]:
        """Each event as it is to be published, in order: under its customer's id if its
        subject is a linked anonymous id; an `identity.linked` is recorded first (so later
        events of the same batch follow it) or, if a guard refuses it, replaced by the
        refusal, and not published: services would merge what the guard kept apart."""
        ids = {e.subject for e in events}
        ids |= {e.data.anonymous_id for e in events if isinstance(e, IdentityLinkedEvent)}
        known = await repository.customers_of(session, ids)
        # A replayed identify of an erased customer must not record a link naming them.
        links = [e for e in events if isinstance(e, IdentityLinkedEvent)]
        erased = (
            await self.tombstones.erased(
                session, {i for e in links for i in (e.subject, e.data.anonymous_id)}
            )
            if links
            else set()
        )
        resolved: list[Event | Outcome] = []
        for event in events:
            customer = known.get(event.subject)
            if customer is not None:
                event = with_subject(event, customer)
                metrics.SUBJECTS_REWRITTEN.inc()
            if isinstance(event, IdentityLinkedEvent):
                outcome = (
                    Outcome.erased
                    if {event.subject, event.data.anonymous_id} & erased
                    else await self._link(session, event)
                )
                metrics.IDENTITY_LINKS.labels(
                    "refused" if outcome.refused else outcome.value,
                    outcome.value if outcome.refused else "",
                ).inc()
                if outcome.refused:
                    log.info(
                        "identity link refused",
                        extra={"reason": outcome.value, "event_id": event.id},
                    )
                    resolved.append(outcome)
                    continue
                known[event.data.anonymous_id] = event.subject
            resolved.append(event)
        return resolved

    async def _link(self, session: AsyncSession, event: IdentityLinkedEvent) -> Outcome:
        anonymous_id, customer_id = event.data.anonymous_id, event.subject
        refusal = self.guards.precheck(anonymous_id, customer_id)
        if refusal is not None:
            return refusal
        outcome = self.guards.decide(
            customer_id, await repository.link_facts(session, anonymous_id, customer_id)
        )
        if outcome is Outcome.linked:
            inserted = await repository.insert_link(
                session, anonymous_id, customer_id, source=event.source, event_id=event.id
            )
            if not inserted:  # linked meanwhile by another request: judge what it wrote
                facts = await repository.link_facts(session, anonymous_id, customer_id)
                outcome = self.guards.decide(customer_id, facts)
        return outcome
