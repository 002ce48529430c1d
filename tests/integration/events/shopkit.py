"""A tiny service built on clm_events, to test the library's promises end to end:
it counts each customer's purchases and revenue (so a duplicate apply would show) and
emits a derived score event per purchase through the outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.consumer import ConsumerRunner, Delivery, Handler
from clm_events.envelope import new_event
from clm_events.outbox import OutboxRelay, add_event
from clm_events.producer import Producer
from clm_events.topics import Topics


@dataclass
class Shop:
    """Tables of the test service, in the test's own schema."""

    metadata: sa.MetaData
    customers: sa.Table
    outbox: sa.Table
    processed: sa.Table
    sessions: async_sessionmaker[AsyncSession]

    async def counts(self) -> dict[str, tuple[int, Decimal]]:
        async with self.sessions() as s:
            rows = await s.execute(sa.select(self.customers))
            return {r.customer_id: (r.purchases, r.revenue) for r in rows}

    async def unpublished(self) -> int:
        async with self.sessions() as s:
            return int(
                await s.scalar(
                    sa.select(sa.func.count()).where(self.outbox.c.published_at.is_(None))
                )
                or 0
            )


def shop_handler(
    shop: Shop, topics: Topics, *, fail_on: Callable[[Delivery], bool] | None = None
) -> Handler:
    async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if fail_on is not None and fail_on(d):
                raise ValueError(f"cannot apply order {d.event.data.order_id}")  # type: ignore[union-attr]
            c = shop.customers
            stmt = insert(c).values(
                customer_id=d.event.subject, purchases=1, revenue=d.event.data.amount
            )  # type: ignore[union-attr]
            stmt = stmt.on_conflict_do_update(
                index_elements=[c.c.customer_id],
                set_={
                    "purchases": c.c.purchases + 1,
                    "revenue": c.c.revenue + stmt.excluded.revenue,
                },
            ).returning(c.c.purchases, c.c.revenue)
            count, revenue = (await session.execute(stmt)).one()
            derived = new_event(
                "lifecycle.score_updated",
                id=f"score-{d.event.subject}-{count}",
                source="test/shop",
                subject=d.event.subject,
                time=d.event.time,
                data={
                    "clv": str(revenue),
                    "churn_probability": 0.0,
                    "p_alive": 1.0,
                    "expected_purchases": float(count),
                    "model": "test",
                },
            )
            await add_event(session, shop.outbox, topics.scores, derived)

    return handle


class Harness:
    """Builds runners and relays wired to the test's topics, shop and producer."""

    def __init__(self, bootstrap: str, topics: Topics, shop: Shop, producer: Producer) -> None:
        self.bootstrap, self.topics, self.shop, self.producer = bootstrap, topics, shop, producer
        self.group = f"g-{uuid.uuid4().hex[:8]}"
        self.tasks: list[asyncio.Task[None]] = []
        self.runners: list[ConsumerRunner] = []

    def runner(
        self,
        cls: type[ConsumerRunner] = ConsumerRunner,
        *,
        handler: Handler | None = None,
        **options: Any,
    ) -> ConsumerRunner:
        r = cls(
            group_id=self.group,
            topics=[self.topics.domain("purchase.completed")],
            bootstrap_servers=self.bootstrap,
            sessions=self.shop.sessions,
            processed_table=self.shop.processed,
            handler=handler or shop_handler(self.shop, self.topics),
            producer=self.producer,
            deadletter_topic=self.topics.deadletter,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            **options,
        )
        self.runners.append(r)
        return r

    def relay(self, cls: type[OutboxRelay] = OutboxRelay) -> OutboxRelay:
        return cls(
            sessions=self.shop.sessions,
            table=self.shop.outbox,
            producer=self.producer,
            service="test",
            poll_interval=0.05,
        )

    async def start(self, runner: ConsumerRunner) -> asyncio.Task[None]:
        await runner.start()
        task = asyncio.create_task(runner.run())
        self.tasks.append(task)
        return task

    async def until(self, predicate: Callable[[], Any], timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.1)
