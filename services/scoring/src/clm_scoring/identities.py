"""Identity merges: an `identity.linked` (subject: the known customer) makes the orders
scoring holds under the anonymous id the customer's.

Ingest rewrites the subject of events that arrive after a link, but events published
before it carry the anonymous id and may reach us before or after the link, on other
topics and partitions. So every batch first maps its subjects through the links table,
and a link moves the anonymous id's orders to the customer, whose history and scores are
then rebuilt as for any purchase; the anonymous id's history and score are deleted. The
customer's orders are what they would be had every event carried the known id.

Both paths hold the ids they touch for the transaction (`repository.lock_ids`): an
anonymous id's purchase and the link that merges it are never in flight together,
whichever replicas handle them. The stage engine merges its own state the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from clm_scoring import metrics, repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    anonymous_id: str
    customer_id: str


@dataclass(frozen=True)
class Resolved:
    linked: dict[str, str]  # anonymous id -> the customer its events count for
    merged_into: set[str]  # customers whose orders grew by a merge in this transaction

    def customer_of(self, subject: str) -> str:
        return self.linked.get(subject, subject)


async def resolve(
    session: AsyncSession, subjects: Collection[str], links: Sequence[Link]
) -> Resolved:
    """Record the links, hold every id the batch touches, and move the linked anonymous
    ids' orders to their customers."""
    ids = set(subjects) | {x.anonymous_id for x in links} | {x.customer_id for x in links}
    held = ids | set((await repository.links_of(session, ids)).values())
    await repository.lock_ids(session, held)
    linked = await repository.links_of(session, ids)  # as committed, now that we hold them
    fresh: dict[str, str] = {}
    for x in links:
        anon, known = x.anonymous_id, x.customer_id
        if linked.get(anon, fresh.get(anon, known)) != known:
            # Ingest refuses a second customer for an anonymous id; a producer writing to
            # our topics directly could still send one. The first link stands.
            metrics.IDENTITY_MERGES.labels("refused").inc()
            log.warning("identity link refused", extra={"anonymous_id": anon, "customer": known})
        elif anon not in linked:
            fresh.setdefault(anon, known)
    await repository.add_links(session, fresh)
    linked |= fresh
    late = {linked[s] for s in subjects if s in linked} - held
    if late:  # linked by a transaction that committed after our first look
        await repository.lock_ids(session, late)

    # A replayed link finds nothing left to move; moving again is then a no-op.
    standing = {
        x.anonymous_id: x.customer_id for x in links if linked[x.anonymous_id] == x.customer_id
    }
    moved = await repository.move_orders(session, standing)
    await repository.delete_customers(session, standing)
    for anon, known in sorted(standing.items()):
        if anon in moved:
            metrics.IDENTITY_MERGES.labels("merged").inc()
            log.info("anonymous id merged", extra={"anonymous_id": anon, "customer": known})
        elif anon in fresh:
            metrics.IDENTITY_MERGES.labels("linked").inc()
    return Resolved(linked, {standing[a] for a in moved})
