"""Fixtures for the clm_events integration tests (helpers live in shopkit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from shopkit import Harness, Shop
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from clm_events.db import outbox_table, processed_events_table
from clm_events.producer import Producer
from clm_events.topics import Topics


@pytest.fixture
async def shop(engine: AsyncEngine, schema: str) -> Shop:
    md = sa.MetaData(schema=schema)
    customers = sa.Table(
        "customers",
        md,
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("purchases", sa.Integer, nullable=False),
        sa.Column("revenue", sa.Numeric(12, 2), nullable=False),
    )
    shop = Shop(
        md,
        customers,
        outbox_table(md),
        processed_events_table(md),
        async_sessionmaker(engine, expire_on_commit=False),
    )
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    return shop


@pytest.fixture
async def harness(bootstrap_servers: str, topics: Topics, shop: Shop) -> AsyncIterator[Harness]:
    producer = Producer(bootstrap_servers, client_id="test")
    await producer.start()
    h = Harness(bootstrap_servers, topics, shop, producer)
    yield h
    for r in h.runners:
        try:
            await r.stop()
        except Exception:
            pass
    for t in h.tasks:
        t.cancel()
    await asyncio.gather(*h.tasks, return_exceptions=True)
    await producer.stop()
