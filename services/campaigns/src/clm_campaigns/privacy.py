"""Erasure of a customer (`privacy.erasure_requested`, run by the shared erasure step in
the consumer runner's transaction) and what an export of one shows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from clm_campaigns import metrics, repository


async def erase(session: AsyncSession, ids: list[str]) -> dict[str, int]:
    """The projection rows of `ids` are deleted (and with them, by cascade, their segment
    memberships), their actions anonymised in place (trigger
    stats and uplift keep their counts); rows per table. Unsent actions are suppressed as
    `erased` without a `campaign.action_fired`: it would name the person again."""
    customers, actions = await repository.erase_customers(session, ids)
    stopped = Counter((a.trigger_id, a.channel) for a in actions if a.stopped)

    def committed(_session: Any) -> None:
        for (trigger, channel), n in stopped.items():
            metrics.ACTIONS.labels(trigger, channel, "suppressed").inc(n)
        if stopped:
            metrics.SUPPRESSIONS.labels("erased").inc(stopped.total())

    sa.event.listen(session.sync_session, "after_commit", committed, once=True)
    return {"customers": customers, "actions": len(actions)}


async def export(session: AsyncSession, customer_id: str) -> dict[str, Any]:
    """Everything campaigns holds of one id (GDPR article 15)."""
    customer, actions = await repository.customer_export(session, customer_id)
    return {
        "service": "campaigns",
        "customer_id": customer_id,
        "found": customer is not None or bool(actions),
        "customer": customer,
        "actions": actions,
        "segments": await repository.memberships_of(session, customer_id),
    }
