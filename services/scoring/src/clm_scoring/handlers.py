"""What the scoring service does with each consumed purchase event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery, Handler
from clm_events.envelope import PurchaseCompletedEvent, PurchaseRefundedEvent
from clm_scoring import repository
from clm_scoring.domain.summary import history
from clm_scoring.jobs import Scorer, today


def purchase_handler(scorer: Scorer) -> Handler:
    """Record the batch's purchases and refunds, rebuild the touched customers' histories
    and rescore them; material moves go to the outbox in the same transaction."""

    async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        purchases: dict[tuple[str, str], tuple[date, Decimal]] = {}
        refunds: dict[tuple[str, str], Decimal] = {}
        for d in deliveries:
            e = d.event
            if isinstance(e, PurchaseCompletedEvent):
                purchases[(e.subject, e.data.order_id)] = (e.time.date(), e.data.amount)
            elif isinstance(e, PurchaseRefundedEvent):
                key = (e.subject, e.data.order_id)
                refunds[key] = refunds.get(key, Decimal(0)) + e.data.amount
        touched = sorted({c for c, _ in purchases} | {c for c, _ in refunds})
        if not touched:
            return  # other event types on the purchase topic do not move scores
        await repository.record_purchases(session, purchases)
        await repository.record_refunds(session, refunds)
        orders = await repository.orders_of(session, touched)
        await repository.save_histories(session, {c: history(orders[c]) for c in touched})
        customers = await repository.to_score(session, touched)
        model = await scorer.served_model(session)
        await scorer.score(session, customers, model=model, as_of=today(), trigger="purchase")

    return handle
