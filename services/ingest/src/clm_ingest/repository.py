"""Every SQL statement of ingest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from clm_ingest.models import outbox


async def queue_routed(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Queue validated events for their domain topics: one bulk insert per batch."""
    if rows:
        await session.execute(outbox.insert(), list(rows))
