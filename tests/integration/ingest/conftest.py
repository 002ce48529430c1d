"""Fixtures for the ingest tests: one running ingest (fresh topics) per module and keys;
for clients that speak HTTP themselves (the Segment libraries), ingest served by uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

import httpx
import pytest
from ingestkit import OnTopic, events_with_ids
from kit import make_key, running, serving


@pytest.fixture(scope="module")
async def ingest(
    migrated: str, bootstrap_servers: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with running("clm_ingest", migrated, bootstrap_servers) as (client, runtime):
        yield client, runtime


@pytest.fixture(scope="module")
async def shop_key(migrated: str) -> str:
    key: str = await make_key(migrated, "source", "shop")
    return key


@pytest.fixture(scope="module")
async def served(migrated: str, bootstrap_servers: str) -> AsyncIterator[tuple[str, Any]]:
    """Ingest over real HTTP on fresh topics: (base URL, Runtime)."""
    async with serving("clm_ingest", migrated, bootstrap_servers) as (url, runtime):
        yield url, runtime


@pytest.fixture(scope="module")
async def write_key(migrated: str) -> str:
    """A Segment write key: a source key of source `web`."""
    key: str = await make_key(migrated, "source", "web")
    return key


@pytest.fixture(scope="module")
async def read_key(migrated: str) -> str:
    key: str = await make_key(migrated, "read")
    return key


@pytest.fixture(scope="module")
async def admin_key(migrated: str) -> str:
    key: str = await make_key(migrated, "admin")
    return key


@pytest.fixture(scope="module")
def on_topic(served: tuple[str, Any], bootstrap_servers: str) -> OnTopic:
    runtime = served[1]

    async def read(domain: str, ids: Collection[str], timeout: float = 15.0) -> list[Any]:
        topic = runtime.topics.domain(domain)
        return await events_with_ids(bootstrap_servers, topic, ids, timeout=timeout)

    return read
