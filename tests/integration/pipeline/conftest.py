"""Fixtures of the whole-pipeline tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

# The campaigns tests' webhook receiver, shared rather than copied.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "campaigns"))

from campaignkit import isolate, receiver

__all__ = ["receiver"]  # the shared fixture


@pytest.fixture(autouse=True)
async def isolated_campaigns(migrated: str, engine: AsyncEngine) -> None:
    await isolate(engine)
