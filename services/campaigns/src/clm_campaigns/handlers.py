"""What the campaigns service does with each consumed event."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery


async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
    """Triggers are evaluated here once the campaigns issue lands;

    Until then messages are only recorded as processed.
    """
