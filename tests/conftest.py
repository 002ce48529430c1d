"""Session-wide real infrastructure: one PostgreSQL and one Kafka broker per test run.

Started lazily (unit tests never start them) on free ports, or taken from
CLM_TEST_DATABASE_URL / CLM_TEST_KAFKA_BOOTSTRAP_SERVERS to run against other servers.
Tests isolate themselves with unique topic prefixes, consumer groups and schemas.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from kit import migrate_all, outside_pytest_tmp
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clm_events.topics import Topics, ensure_topics


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    if url := os.environ.get("CLM_TEST_DATABASE_URL"):
        yield url
        return
    from clm_devstack.postgres import EmbeddedPostgres

    with outside_pytest_tmp("clm-test-postgres-") as tmp:
        pg = EmbeddedPostgres(tmp / "data")
        pg.start()
        try:
            yield pg.url()
        finally:
            pg.stop()


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A directory for a test's own PostgreSQL (or a whole stack): see outside_pytest_tmp."""
    with outside_pytest_tmp("clm-test-") as tmp:
        yield tmp


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if servers := os.environ.get("CLM_TEST_KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    from clm_devstack.tansu import TansuBroker

    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=10)
    yield eng
    await eng.dispose()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def topics(bootstrap_servers: str) -> Topics:
    """A fresh set of CLM topics (4 partitions) for this test only."""
    t = Topics(prefix=unique("t") + ".", partitions=4)
    await ensure_topics(bootstrap_servers, t.all())
    return t


@pytest.fixture
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    """An empty schema for this test, dropped afterwards."""
    name = unique("test_")
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


@pytest.fixture(scope="session")
async def migrated(database_url: str) -> str:
    """The database with every service's schema and the key schema migrated (once)."""
    await migrate_all(database_url)
    return database_url
