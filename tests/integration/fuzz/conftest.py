"""What the fuzz tests share: a database of their own (fuzzkit.py has the helpers).

Fuzzing replaces the lifecycle model, refits the scoring model, creates campaign triggers
and publishes thousands of odd customers, which other tests must not see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kit import fresh_database


@pytest.fixture(scope="module")
async def fuzz_database(database_url: str) -> AsyncIterator[str]:
    """A fresh database on the test server with every service's schema migrated."""
    async with fresh_database(database_url) as url:
        yield url
