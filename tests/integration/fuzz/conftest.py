"""What the fuzz tests share: a database of their own (fuzzkit.py has the helpers).

Fuzzing replaces the lifecycle model, refits the scoring model, creates campaign triggers
and publishes thousands of odd customers, which other tests must not see.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from kit import migrate_all
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.fixture(scope="module")
async def fuzz_database(database_url: str) -> AsyncIterator[str]:
    """A fresh database on the test server with every service's schema migrated."""
    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
        await migrate_all(url)
        yield url
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
