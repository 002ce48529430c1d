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
from clm_events.catalog import RFM_SEGMENTS, Stage


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[Any]:
    async with fresh_database(database_url) as url:
        engine = db.create_engine(url)
        yield async_sessionmaker(engine, expire_on_commit=False)
        await engine.dispose()


_strings = st.sampled_from(["gold", "free", "", "5", "12.50", " 7", "1e3", "abc", "Gold", "é"])
_numbers = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([0.5, 2.0, 5.5, 1e20, -1.25, 10**17, 500, 1822.5]),
)
_scalars = st.one_of(_strings, _numbers, st.booleans(), st.none())
_json = st.one_of(_scalars, st.lists(_scalars, max_size=2), st.dictionaries(_strings, _scalars))


def _maybe(keys: list[str], values: Any) -> Any:
    """A map with some of these keys (a missing key is an error in CEL)."""
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


_state = st.builds(
    lambda stage, traits, facts, scores: (stage, traits, facts, scores),
    st.one_of(st.none(), st.sampled_from([s.value for s in Stage])),
    _maybe(["plan", "vip", "age", "email"], _json),
    _maybe(["purchases_total", "revenue_total", "subscription_status", "latest_nps"], _json),
    _maybe(
        ["clv", "churn_probability", "rfm_recency", "rfm_segment", "model"],
        st.one_of(_json, st.sampled_from(RFM_SEGMENTS)),
    ),
)

PATHS = [
    "stage",
    "traits.plan",
    "traits.vip",
    "traits.age",
    "facts.purchases_total",
    "facts.revenue_total",
    "facts.subscription_status",
    "facts.latest_nps",
    "facts.email",
    "facts.clv",
    "scores.clv",
    "scores.churn_probability",
    "scores.rfm_recency",
    "scores.rfm_segment",
    "scores.model",
]
_literal = st.one_of(
    st.sampled_from(['"gold"', '"5"', '""', '"at_risk"', '"Champions"', '"\\u00e9"', "'free'"]),
    st.sampled_from(["0", "5", "-3", "2.5", "500", "1822.5", "1e3", "true", "false", "null"]),
)
_op = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])


@st.composite
def _atom(draw: Any) -> str:
    path = draw(st.sampled_from(PATHS))
    if draw(st.integers(0, 5)) == 0:
        items = draw(st.lists(_literal, max_size=3))
        return f"{path} in [{', '.join(items)}]"
    left, right = path, draw(_literal)
    if draw(st.booleans()):
        left, right = right, left
    return f"{left} {draw(_op)} {right}"


_condition = st.recursive(
    st.one_of(_atom(), st.sampled_from(["true", "false", "traits.vip"])),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"{a} && {b}", inner, inner),
        st.builds(lambda a, b: f"({a} || {b})", inner, inner),
        st.builds(lambda a: f"!({a})", inner),
    ),
    max_leaves=5,
)


async def _fill(session: AsyncSession, rows: list[Any]) -> list[CustomerState]:
    await session.execute(sa.delete(customers))
    states = [
        CustomerState(f"c{i:03}", stage=st_, traits=t, facts=f, scores=sc)
        for i, (st_, t, f, sc) in enumerate(rows)
    ]
    await repository.save_customers(session, states)
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
    rows=st.lists(_state, min_size=1, max_size=12),
    conditions=st.lists(_condition, min_size=1, max_size=4),
)
async def test_sql_matches_exactly_the_customers_cel_matches(
    sessions: Any, rows: list[Any], conditions: list[str]
) -> None:
    async with sessions() as s, s.begin():
        states = await _fill(s, rows)
        for source in conditions:
            try:
                segment = CompiledSegment(
                    "x", 1, compile_segment_condition(source, check_types=False)
                )
            except ConditionError:
                continue
            translated = condition_sql(source)
            assume(translated is not None)
            assert translated is not None
            by_cel = {c.customer_id for c in states if segment.matches(c)}
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
