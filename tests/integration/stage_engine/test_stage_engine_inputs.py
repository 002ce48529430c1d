"""Stored inputs: an event id reused for another event is refused, naming it, and
changes nothing, so the stored inputs and the fold they back never disagree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from clm_events import db
from clm_events.topics import Topics
from clm_stage_engine.domain.inputs import PURCHASE, Input, to_us
from clm_stage_engine.handlers import StageEngine
from clm_stage_engine.models import SCHEMA

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)


def _buy(days: int, order: str) -> Input:
    return Input(to_us(T0 + timedelta(days=days)), "shop", order, PURCHASE, {"amount": 30.0})


async def test_an_event_id_reused_at_another_time_is_refused_and_changes_nothing(
    migrated: str,
) -> None:
    customer = f"reuse-{uuid.uuid4().hex[:8]}"
    engine = db.create_engine(migrated)
    sessions = db.session_factory(engine)
    stage = StageEngine(Topics(prefix=f"t{uuid.uuid4().hex[:6]}."))

    async def stored() -> list[tuple[str, str]]:
        async with sessions() as s:
            rows = await s.execute(
                sa.text(
                    f"SELECT event_id, stage FROM {SCHEMA}.inputs i JOIN "
                    f"{SCHEMA}.customers c USING (customer_id) WHERE customer_id = :c"
                ),
                {"c": customer},
            )
            return [tuple(r) for r in rows]

    try:
        async with sessions() as s, s.begin():
            await stage.apply(s, {customer: [_buy(0, "o-1")]}, publish=False)
        before = await stored()
        # The same id, later: in order, so its id is not looked up before it is stored.
        with pytest.raises(ValueError, match=r"'o-1' from 'shop'.*already applied"):
            async with sessions() as s, s.begin():
                await stage.apply(s, {customer: [_buy(5, "o-1")]}, publish=False)
        assert await stored() == before == [("o-1", "onboarding")]
    finally:
        await engine.dispose()
