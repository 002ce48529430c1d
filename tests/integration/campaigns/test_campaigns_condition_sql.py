"""Segment conditions counted by PostgreSQL match exactly the customers the CEL
evaluation matches: random conditions over random projections (values of every JSON type,
numbers as strings, missing keys, nulls) agree customer by customer on every row the SQL
decides, the rows it leaves undecided are the odd ones, and the estimate equals a count
in Python."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from conditionkit import conditions, customer, states
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kit import fresh_database
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import repository
from clm_campaigns.condition_sql import condition_sql
from clm_campaigns.domain.conditions import ConditionError
from clm_campaigns.domain.projection import CustomerState
from clm_campaigns.domain.segments import CompiledSegment, compile_segment_condition
from clm_campaigns.models import customers
from clm_campaigns.segments import estimate
from clm_events import db


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[Any]:
    async with fresh_database(database_url) as url:
        engine = db.create_engine(url)
        yield async_sessionmaker(engine, expire_on_commit=False)
        await engine.dispose()


async def _fill(session: AsyncSession, rows: list[Any]) -> list[CustomerState]:
    await session.execute(sa.delete(customers))
    await repository.save_customers(session, [customer(i, r) for i, r in enumerate(rows)])
    # As every pass reads them back: JSON decoded by the driver.
    return await repository.customers_page(session, "", 10_000)


async def _sql(session: AsyncSession, where: Any) -> set[str]:
    return set(await session.scalars(sa.select(customers.c.customer_id).where(where)))


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(states, min_size=1, max_size=12),
    sources=st.lists(conditions, min_size=1, max_size=4),
)
async def test_sql_matches_exactly_the_customers_cel_matches(
    sessions: Any, rows: list[Any], sources: list[str]
) -> None:
    async with sessions() as s, s.begin():
        states = await _fill(s, rows)
        for source in sources:
            try:
                segment = CompiledSegment(
                    "x", 1, compile_segment_condition(source, check_types=False)
                )
            except ConditionError:
                continue
            translated = condition_sql(source)
            assume(translated is not None)
            assert translated is not None
            by_cel = {c.customer_id for c in states if segment.by_cel(c)}
            undecided = await _sql(s, translated.undecided)
            decided_true = await _sql(s, sa.and_(sa.not_(translated.undecided), translated.matches))
            assert decided_true == by_cel - undecided, source
            assert await estimate(s, segment, page=5) == len(by_cel), source


def test_typical_conditions_translate_and_others_fall_back() -> None:
    for source in [
        'stage == "at_risk" && scores.clv > 500',
        'scores.rfm_segment in ["Champions", "Loyal"] || !(facts.purchases_total < 2)',
        'traits.plan == "gold" && facts.subscription_status != "cancelled"',
        "true",
    ]:
        assert condition_sql(source) is not None, source
    for source in [
        "facts.revenue_total > facts.purchases_total * 10.0",  # arithmetic, two fields
        'has(traits.plan) && traits.plan == "gold"',  # a macro
        'facts.last_purchase_at > timestamp("2026-01-01T00:00:00Z")',  # timestamps
        'scores["clv"] > 5.0',  # index syntax
        "size(traits) > 2",
    ]:
        assert condition_sql(source) is None, source


async def test_typical_data_is_decided_by_postgresql_alone(sessions: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    rows = [
        (
            ["active", "at_risk", "loyal"][i % 3],
            {"plan": ["gold", "free"][i % 2], "email": f"{tag}{i}@example.com"},
            {"purchases_total": i % 5, "revenue_total": i * 12.5, "subscription_status": "none"},
            {"clv": f"{i * 40}.50", "churn_probability": i / 100, "rfm_segment": "Champions"},
        )
        for i in range(60)
    ]
    async with sessions() as s, s.begin():
        states = await _fill(s, rows)
        source = 'stage == "at_risk" && scores.clv > 500 || traits.plan == "gold"'
        translated = condition_sql(source)
        assert translated is not None
        assert await _sql(s, translated.undecided) == set()
        segment = CompiledSegment("x", 1, compile_segment_condition(source))
        expected = sum(1 for c in states if segment.matches(c))
        assert await estimate(s, segment) == expected > 0
