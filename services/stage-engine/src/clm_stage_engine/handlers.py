"""What the stage engine service does with each consumed event."""

from collections.abc import Sequence

from clm_events.consumer import Delivery
from sqlalchemy.ext.asyncio import AsyncSession


async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
    """Lifecycle stages are computed here once the stage-engine issue lands;

    Until then events are only recorded as processed.
    """
