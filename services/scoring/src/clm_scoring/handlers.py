"""What the scoring service does with each consumed event."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery


async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
    """CLV and churn scores are computed here once the scoring issue lands;

    Until then purchases are only recorded as processed.
    """
