"""What the fuzz tests share: a database of their own (fuzzkit.py has the helpers).

Fuzzing replaces the lifecycle model, refits the scoring model, creates campaign triggers
and publishes thousands of odd customers, which other tests must not see.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from kit import SERVICES
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from clm_events.migrations import migrate, migrate_auth


@pytest.fixture(scope="module")
async def fuzz_database(database_url: str) -> AsyncIterator[str]:
    """A fresh database on the test server with every service's schema migrated."""
    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(migrate_auth, url)
        for package in SERVICES:
            models = importlib.import_module(f"{package}.models")
            scripts = Path(importlib.import_module(package).__file__ or "").parent / "migrations"
            await asyncio.to_thread(migrate, scripts, url=url, schema=models.SCHEMA)
        yield url
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
