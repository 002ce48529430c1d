"""What the stage engine service does with each consumed event."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery


async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
    """Lifecycle stages are computed here once the stage-engine issue lands;

    Until then events are only recorded as processed.
    """
