"""The timer loop: time moves customers with no event arriving (active -> at_risk ->
lapsed). It claims due customers in batches with FOR UPDATE SKIP LOCKED, so replicas
share the sweep, and re-evaluates customers after a model change the same way.

Several batches run at once (`workers`), as replicas would.

It owns its transactions (like the consumer runner does for events): each claimed batch
is one transaction holding the new state, history and outbox rows, which first waits for
a privacy erasure in progress (`Tombstones.guard`): a batch that claimed a customer
before the erasure and wrote after it would bring the person back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.db import is_retryable
from clm_events.privacy import Tombstones
from clm_stage_engine import metrics
from clm_stage_engine import repository as repo
from clm_stage_engine.handlers import StageEngine

log = logging.getLogger(__name__)


class TimerLoop:
    def __init__(
        self,
        engine: StageEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        tombstones: Tombstones | None,
        batch_size: int = 2000,
        workers: int = 2,
        interval: float = 1.0,
        stats_interval: float = 15.0,
        on_committed: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._tombstones = tombstones
        self._batch_size = batch_size
        self._workers = workers
        self._interval = interval
        self._stats_interval = stats_interval
        self._on_committed = on_committed
        self._clock = clock
        self._last_stats = 0.0

    async def sweep(self, now: datetime | None = None) -> int:
        """Evaluate every customer due by `now` (default: the wall clock) and every
        customer behind the current model; return how many were evaluated."""
        now = now or self._clock()
        total = 0
        for step in (self._engine.sweep_model_change, self._engine.sweep_due):
            # Concurrent batches (disjoint, by SKIP LOCKED) keep the database busy while
            # Python evaluates the next batch: one loop alone leaves a core idle.
            tasks = [asyncio.ensure_future(self._drain(step, now)) for _ in range(self._workers)]
            try:
                total += sum(await asyncio.gather(*tasks))
            except BaseException:
                # One failed: stop the others too (their transactions roll back) before
                # the caller retries, so sweeps never overlap.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return total

    async def _drain(
        self, step: Callable[[AsyncSession, datetime, int], Awaitable[int]], now: datetime
    ) -> int:
        total = 0
        while True:
            async with self._sessions() as session, session.begin():
                if self._tombstones is not None:
                    await self._tombstones.guard(session)
                n = await step(session, now, self._batch_size)
            total += n
            if n and self._on_committed is not None:
                self._on_committed()
            if n < self._batch_size:
                return total

    async def update_stats(self) -> None:
        now = self._clock()
        async with self._sessions() as session:
            backlog, oldest = await repo.timer_backlog(session, now)
            counts = await repo.stage_counts(session)
        metrics.TIMER_BACKLOG.set(backlog)
        metrics.TIMER_LAG.set((now - oldest).total_seconds() if oldest else 0.0)
        for stage, n in counts.items():
            metrics.CUSTOMERS.labels(stage).set(n)

    async def run(self) -> None:
        backoff = self._interval
        while True:
            try:
                if time.monotonic() - self._last_stats > self._stats_interval:
                    self._last_stats = time.monotonic()
                    await self.update_stats()
                await self.sweep()
                backoff = self._interval
            except Exception as exc:
                if not is_retryable(exc):
                    log.exception("timer sweep failed; retrying")
                else:
                    log.warning("timer sweep failed on a transient error; retrying")
                backoff = min(backoff * 2, 30.0)
            await asyncio.sleep(backoff)
