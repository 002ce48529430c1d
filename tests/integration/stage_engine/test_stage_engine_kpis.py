"""Every KPI rate is a share of the customers it is a rate of: over random histories and
windows, retention, churn and conversion stay within [0, 1] (a churn rate of 3 once
reached the console as "Churn 250%")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

import clm_stage_engine
from clm_events.catalog import Stage
from clm_events.migrations import migrate
from clm_stage_engine import kpis
from clm_stage_engine.models import SCHEMA, transitions

SCRIPTS = Path(clm_stage_engine.__file__).parent / "migrations"
T0 = datetime(2020, 1, 1, tzinfo=UTC)
STAGES = [s.value for s in Stage]


@pytest.fixture(scope="module")
async def kpi_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of its own: the rates are over every customer in it."""
    name = f"kpi_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(migrate, SCRIPTS, url=url, schema=SCHEMA)
    engine = create_async_engine(url)
    yield engine
    await engine.dispose()
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()


# A customer's history: the stages they moved to, each some days after the previous.
_history = st.lists(st.tuples(st.integers(0, 120), st.sampled_from(STAGES)), min_size=1, max_size=8)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # one customer at the start, two who became customers and lapsed meanwhile
    histories=[
        [(0, "active")],
        [(0, "prospect"), (150, "active"), (10, "lapsed")],
        [(0, "prospect"), (120, "onboarding"), (20, "lapsed")],
    ],
    start_day=100,
    length=100,
)
@given(
    histories=st.lists(_history, min_size=1, max_size=5),
    start_day=st.integers(0, 400),
    length=st.integers(1, 200),
)
async def test_every_kpi_rate_is_a_share_of_its_customers(
    kpi_engine: AsyncEngine, histories: list[list[tuple[int, str]]], start_day: int, length: int
) -> None:
    rows = []
    for n, history in enumerate(histories):
        day, previous = 0, None
        for position, (gap, stage) in enumerate(history):
            day += gap
            rows.append(
                {
                    "customer_id": f"c-{n}",
                    "position": position,
                    "transition_id": f"tr-{n}-{position}",
                    "at": T0 + timedelta(days=day),
                    "from_stage": previous,
                    "to_stage": stage,
                    "cause": "event",
                    "model_version": 1,
                    "facts": {},
                }
            )
            previous = stage
    start = T0 + timedelta(days=start_day)
    async with async_sessionmaker(kpi_engine)() as session, session.begin():
        await session.execute(transitions.delete())
        await session.execute(transitions.insert(), rows)
        result = await kpis.over(session, start, start + timedelta(days=length))
        await session.rollback()
    for name in ("retention_rate", "churn_rate", "conversion_rate"):
        rate = result[name]
        assert rate is None or 0.0 <= rate <= 1.0, (name, result)
