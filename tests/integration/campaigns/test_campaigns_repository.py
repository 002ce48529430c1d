"""The batch statements: many rows in one statement, stored and read back exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from clm_campaigns import repository
from clm_campaigns.domain.projection import CustomerState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _action(customer: str, status: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": f"act_{uuid.uuid4().hex}",
        "trigger_id": "trg_repo",
        "trigger_version": 1,
        "customer_id": customer,
        "channel": "webhook",
        "status": status,
        "suppressed_reason": None,
        "deferred_reason": None,
        "target": {"url": "https://example.com/hook", "headers": {"x-a": "ü"}},
        "payload": '{"a": 1}',
        "cause_event": "test/e1",
        "cause_time": NOW,
        "created_at": NOW,
        "due_at": NOW,
        "attempts": 0,
        "last_error": None,
        "delivered_at": None,
        "conversion_window_seconds": 3600,
        "converted_at": None,
        "entry_key": "active#1",
        "occasion": {"id": "e1", "data": {"amount": "ü"}},
        "transactional": False,
        **changes,
    }


async def test_actions_and_customers_of_a_batch_are_stored_as_given(
    migrated: str, engine: AsyncEngine
) -> None:
    customer = f"cust-{uuid.uuid4().hex[:10]}"
    rows = [
        _action(customer, "pending"),
        _action(customer, "suppressed", suppressed_reason="cooldown", target={}, payload=None),
    ]
    state = CustomerState(
        customer,
        stage="at_risk",
        stage_at=NOW,
        traits={"email": "ada@example.com"},
        facts={"revenue_total": 12.5, "name": None},
        scores={},
        recent_purchases=[{"order_id": "o1", "amount": "5"}],
    )
    sessions = async_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await repository.insert_actions(session, rows)
        await repository.save_customers(session, [state])
    async with sessions() as session:
        stored = await repository.list_actions(
            session, customer_id=customer, trigger_id=None, status=None, limit=10
        )
        assert await repository.get_customer(session, customer) == state
    by_id = {a["id"]: a for a in stored}
    for row in rows:
        read = by_id[row["id"]]
        assert read == {k: row[k] for k in read}

    # Saving again updates in place (the consumer's read-modify-write of the projection).
    state.stage, state.facts = "lapsed", {}
    async with sessions() as session, session.begin():
        await repository.save_customers(session, [state])
    async with sessions() as session:
        assert await repository.get_customer(session, customer) == state


async def test_finishing_records_the_first_outcome_of_actions_still_being_sent(
    migrated: str, engine: AsyncEngine
) -> None:
    customer = f"cust-{uuid.uuid4().hex[:10]}"
    sending, retried, done = (
        _action(customer, "sending"),
        _action(customer, "sending"),
        _action(customer, "delivered", delivered_at=NOW),
    )
    later = NOW + timedelta(minutes=5)
    sessions = async_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await repository.insert_actions(session, [sending, retried, done])
        await repository.finish(
            session,
            [
                {
                    "id": sending["id"],
                    "status": "delivered",
                    "due_at": later,
                    "delivered_at": later,
                    "last_error": None,
                },
                {
                    "id": retried["id"],
                    "status": "pending",
                    "due_at": later,
                    "delivered_at": None,
                    "last_error": "HTTP 503",
                },
                # A second outcome for the same action changes nothing: it is no longer
                # being sent once the first one is recorded.
                {
                    "id": sending["id"],
                    "status": "failed",
                    "due_at": later,
                    "delivered_at": None,
                    "last_error": "late",
                },
                # Not being sent: left as it is.
                {
                    "id": done["id"],
                    "status": "failed",
                    "due_at": later,
                    "delivered_at": None,
                    "last_error": "late",
                },
            ],
        )
    async with sessions() as session:
        stored = await repository.list_actions(
            session, customer_id=customer, trigger_id=None, status=None, limit=10
        )
    got = {a["id"]: (a["status"], a["due_at"], a["delivered_at"], a["last_error"]) for a in stored}
    assert got == {
        sending["id"]: ("delivered", later, later, None),
        retried["id"]: ("pending", later, None, "HTTP 503"),
        done["id"]: ("delivered", NOW, NOW, None),
    }
