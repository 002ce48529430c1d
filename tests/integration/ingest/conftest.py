"""Fixtures for the ingest tests: one running ingest (fresh topics) per module and keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kit import make_key, running


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
