"""What the scoring service does with each consumed event: purchases and refunds (the
purchase topic) and identity links (the web topic)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery, Handler
from clm_events.envelope import (
    CloudEvent,
    Event,
    IdentityLinkedEvent,
    PurchaseCompletedEvent,
    PurchaseRefundedEvent,
    decode_kafka_record,
)
from clm_events.privacy import Tombstones
from clm_scoring import identities, repository
from clm_scoring.domain.summary import history
from clm_scoring.jobs import Scorer, today

HANDLED = frozenset({"purchase.completed", "purchase.refunded", "identity.linked"})


def decode(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> Event:
    """The runner's decoder: the events scoring handles are validated in full; any other
    (the web topic's page views, tracks, ...) is read only as far as the runner needs it,
    for its idempotency key and time, because the handler passes over it."""
    return _passed_over(headers, value) or decode_kafka_record(headers, value)


def _passed_over(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> Event | None:
    """A structured event of a type scoring does not handle, unvalidated; None for
    anything else (binary mode, which ingest does not write, is decoded in full)."""
    if value is None or any(key == "ce_specversion" for key, _ in headers):
        return None
    try:
        obj = json.loads(value)
        kind, at = obj["type"], datetime.fromisoformat(obj["time"])
        ids = {name: obj[name] for name in ("id", "source", "subject")}
    except (ValueError, TypeError, KeyError, RecursionError):
        return None  # the full decoder says what is wrong with it
    if not isinstance(kind, str) or kind in HANDLED or at.tzinfo is None:
        return None
    if not all(isinstance(v, str) and v for v in ids.values()):
        return None
    event = CloudEvent.model_construct(specversion="1.0", type=kind, time=at, **ids)
    return cast("Event", event)  # no handler branch matches it


def events_handler(
    scorer: Scorer, *, clock: Callable[[], date] = today, tombstones: Tombstones | None = None
) -> Handler:
    """Record the batch's links, purchases and refunds under the customer they count for,
    rebuild the touched customers' histories and rescore them (as of `clock()`); material
    moves go to the outbox in the same transaction. A link naming an erased anonymous id
    (`tombstones`) is passed over."""

    async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        purchases: list[tuple[str, str, date, Decimal]] = []
        refunds: list[tuple[str, str, Decimal]] = []
        links: list[identities.Link] = []
        for d in deliveries:
            e = d.event
            if isinstance(e, PurchaseCompletedEvent):
                purchases.append((e.subject, e.data.order_id, e.time.date(), e.data.amount))
            elif isinstance(e, PurchaseRefundedEvent):
                refunds.append((e.subject, e.data.order_id, e.data.amount))
            elif isinstance(e, IdentityLinkedEvent):
                links.append(identities.Link(e.data.anonymous_id, e.subject))
        if links and tombstones is not None:
            # The runner drops events whose subject was erased; a link names a second id,
            # which applying it would write back.
            erased = await tombstones.erased(session, {x.anonymous_id for x in links})
            links = [x for x in links if x.anonymous_id not in erased]
        if not (purchases or refunds or links):
            return  # page views and the like do not move scores
        subjects = {p[0] for p in purchases} | {r[0] for r in refunds}
        resolved = await identities.resolve(session, subjects, links)
        owner = resolved.customer_of
        bought = {(owner(c), o): (day, amount) for c, o, day, amount in purchases}
        refunded: dict[tuple[str, str], Decimal] = {}
        for c, o, amount in refunds:
            key = (owner(c), o)
            refunded[key] = refunded.get(key, Decimal(0)) + amount
        await repository.record_purchases(session, bought)
        await repository.record_refunds(session, refunded)
        touched = sorted({c for c, _ in bought} | {c for c, _ in refunded} | resolved.merged_into)
        if not touched:
            return
        orders = await repository.orders_of(session, touched)
        await repository.save_histories(session, {c: history(orders[c]) for c in touched})
        customers = await repository.to_score(session, touched)
        model = await scorer.served_model(session)
        await scorer.score(session, customers, model=model, as_of=clock(), trigger="purchase")

    return handle
