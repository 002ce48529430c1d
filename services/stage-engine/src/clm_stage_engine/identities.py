"""Identity merges: an `identity.linked` (subject: the known customer) makes what the
stage engine holds under the anonymous id the customer's.

Ingest rewrites the subject of events that arrive after a link, but events published
before it carry the anonymous id and may reach us before or after the link, on other
topics and partitions. So every batch first maps its subjects through the links table,
and a link moves the anonymous id's stored inputs to the customer (whose history is then
replayed as for late events) and retracts what was published under the anonymous id.
The merged history is what it would be had every event carried the known id.

Both paths hold the ids they touch for the transaction (`repository.lock_ids`): an
anonymous id's event and the link that merges it are never in flight together, whichever
replicas handle them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from clm_stage_engine import metrics
from clm_stage_engine import repository as repo
from clm_stage_engine.domain.inputs import SCORE, Input
from clm_stage_engine.domain.timeline import Timeline
from clm_stage_engine.outbound import merged_event, retracted_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    anonymous_id: str
    customer_id: str
    at: int  # the link event's time, µs


@dataclass
class Merged:
    by_customer: dict[str, list[Input]]  # the batch's inputs under the ids they count for
    # (key customer, event id, event) to publish before the transitions the batch makes:
    # merge notices (keyed by the customer) and the anonymous ids' retractions.
    messages: list[tuple[str, str, bytes]] = field(default_factory=list)


async def resolve(
    session: AsyncSession, by_customer: dict[str, list[Input]], links: Sequence[Link]
) -> Merged:
    """Record the links, key every input by the customer it counts for, and take over
    what the linked anonymous ids hold."""
    ids = set(by_customer) | {link.anonymous_id for link in links}
    ids |= {link.customer_id for link in links}
    held = ids | set((await repo.links_of(session, sorted(ids))).values())
    await repo.lock_ids(session, sorted(held))
    linked = await repo.links_of(session, sorted(ids))  # as committed, now that we hold them
    fresh: dict[str, str] = {}
    for link in links:
        anon, known = link.anonymous_id, link.customer_id
        if linked.get(anon, fresh.get(anon, known)) != known:
            # Ingest refuses a second customer for an anonymous id; a producer writing to
            # our topics directly could still send one. The first link stands.
            metrics.MERGES.labels("refused").inc()
            log.warning("identity link refused", extra={"anonymous_id": anon, "customer": known})
        elif anon not in linked:
            fresh.setdefault(anon, known)
    await repo.add_links(session, sorted(fresh.items()))
    linked |= fresh
    late = {linked[cid] for cid in by_customer if cid in linked} - held
    if late:  # linked by a transaction that committed after our first look
        await repo.lock_ids(session, sorted(late))

    merged = Merged({})
    for cid, items in by_customer.items():
        merged.by_customer.setdefault(linked.get(cid, cid), []).extend(items)
    await _take_over(
        session, [x for x in links if linked.get(x.anonymous_id) == x.customer_id], fresh, merged
    )
    return merged


async def _take_over(
    session: AsyncSession, links: list[Link], fresh: dict[str, str], merged: Merged
) -> None:
    """Move the anonymous ids' inputs to their customers and retract their history."""
    stored = await repo.lock_customers(session, sorted({x.anonymous_id for x in links}))
    raw = await repo.load_inputs(session, list(stored))
    done: set[str] = set()
    for link in links:
        anon, known = link.anonymous_id, link.customer_id
        if anon in done or (anon not in stored and anon not in fresh):
            continue  # a replayed link with nothing left to move
        done.add(anon)
        merged.messages.append((known, *merged_event(known, anon, link.at)))
        if anon not in stored:
            metrics.MERGES.labels("linked").inc()
            continue
        moved = [Input.from_json(json.loads(r)) for r in raw.get(anon, [])]
        merged.by_customer.setdefault(known, []).extend(i for i in moved if i.kind != SCORE)
        tl = Timeline.from_json(anon, json.loads(stored[anon][0].decode()), None)
        for t in tl.history:
            event_id = tl.retract(t)
            merged.messages.append((anon, event_id, retracted_event(anon, event_id, t)))
        metrics.MERGES.labels("merged").inc()
        log.info(
            "anonymous id merged",
            extra={"anonymous_id": anon, "customer": known, "inputs": len(moved)},
        )
    await repo.delete_customers(session, list(stored))
