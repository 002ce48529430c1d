"""The campaigns service's time: the real clock, moved forward by an offset when clock
control is enabled (tests and demos run a journey's three-day wait in a second).

Everything that decides with time reads it here: the consumer (caps, ages, due times),
the journey runner and the dispatcher's claim of due actions. The offset is kept in the
database, so replicas and a restarted service share it; each reads it again at most once
every `refresh` seconds. Webhook signatures keep the real time (receivers check it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import repository


class Clock:
    def __init__(self, *, controlled: bool = False, refresh: float = 1.0) -> None:
        self.controlled = controlled
        self.offset = timedelta(0)
        self._refresh, self._read_at = refresh, -float("inf")

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sync(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Read the shared offset again if it is time to (a no-op without clock control)."""
        if not self.controlled or time.monotonic() - self._read_at < self._refresh:
            return
        async with sessions() as session:
            self.offset = timedelta(seconds=await repository.clock_offset(session))
        self._read_at = time.monotonic()

    async def advance(self, session: AsyncSession, seconds: float) -> datetime:
        """Move every replica's time forward (committed by the caller)."""
        offset = await repository.advance_clock(session, seconds)
        self.offset, self._read_at = timedelta(seconds=offset), time.monotonic()
        return self.now()
