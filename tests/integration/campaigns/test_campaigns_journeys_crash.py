"""The campaigns service SIGKILLed inside each journey pass (its transaction has written
the step's action and waits, by a table lock the test holds, to write the step's log
row): after a restart every step has run once and every send step has one action and
one delivery."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from campaignkit import DAY, WebhookReceiver, cid, eventually, onboarding, publish, transition
from kit import ServiceProcess, bearer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clm_devstack.procs import free_port
from clm_events.topics import Topics, ensure_topics


def _env(database_url: str, bootstrap: str, prefix: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "CLM_DATABASE_URL": database_url,
        "CLM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CLM_TOPIC_PREFIX": prefix,
        "CLM_TOPIC_PARTITIONS": "2",
        "CLM_LOG_JSON": "false",
        "CLM_CAMPAIGNS_PORT": str(port),
        "CLM_CAMPAIGNS_GROUP_ID": f"g-{prefix}",
        "CLM_CAMPAIGNS_CLOCK_CONTROL": "true",
        "CLM_CAMPAIGNS_JOURNEY_POLL_INTERVAL": "0.1",
        "CLM_CAMPAIGNS_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "CLM_CAMPAIGNS_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "CLM_CAMPAIGNS_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
    }


@asynccontextmanager
async def step_log_held(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Hold journey_steps against writes: a journey pass then waits at its step log row,
    with its action written in the same open transaction."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("BEGIN"))
        await conn.execute(sa.text("LOCK TABLE campaigns.journey_steps IN SHARE MODE"))
        try:
            yield conn
        finally:
            await conn.execute(sa.text("ROLLBACK"))


async def _pass_waiting(engine: AsyncEngine) -> bool:
    """A transaction waits for the lock on journey_steps."""
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'journey_steps' AND NOT l.granted"
            )
        )
    return bool(waiting)


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(sa.text(sql), params))


@pytest.mark.timeout(240)
async def test_a_kill_inside_each_journey_pass_runs_every_step_exactly_once(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    prefix = f"k{uuid.uuid4().hex[:8]}."
    await ensure_topics(bootstrap_servers, Topics(prefix, 2).all())
    env = _env(migrated, bootstrap_servers, prefix, free_port("127.0.0.1"))
    service = ServiceProcess("campaigns", env)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            r = await client.post(
                "/v1/journeys", json=onboarding(receiver.url), headers=bearer(admin_key)
            )
            assert r.status_code == 201, r.text
            journey = r.json()["id"]
            customer = cid()
            async with step_log_held(engine):
                await publish(
                    bootstrap_servers,
                    Topics(prefix, 2).transitions,
                    customer,
                    transition(customer, "onboarding"),
                )
                await eventually(lambda: _pass_waiting(engine), what="the welcome pass to wait")
                await service.kill()  # the welcome's action written, not committed
            await service.start()

            async def waiting() -> bool:
                rows = await _rows(
                    engine,
                    "SELECT status FROM campaigns.journey_runs WHERE customer_id = :c",
                    c=customer,
                )
                return [r.status for r in rows] == ["waiting"]

            await eventually(waiting, timeout=30, what="the run to wait three days")
            async with step_log_held(engine):
                r = await client.post(
                    "/v1/clock", json={"advance_seconds": 3 * DAY + 60}, headers=bearer(admin_key)
                )
                assert r.status_code == 200, r.text
                await eventually(lambda: _pass_waiting(engine), what="the tip pass to wait")
                await service.kill()  # waited, branched, the tip's action written: not committed
            await service.start()

            async def completed() -> bool:
                rows = await _rows(
                    engine,
                    "SELECT status FROM campaigns.journey_runs WHERE customer_id = :c",
                    c=customer,
                )
                return [r.status for r in rows] == ["completed"] and len(receiver.received) >= 2

            await eventually(completed, timeout=60, what="the run to complete and send")
            await asyncio.sleep(1)  # a duplicate, if there were one, would arrive meanwhile
            steps = await _rows(
                engine,
                "SELECT s.step_id FROM campaigns.journey_steps s JOIN campaigns.journey_runs r "
                "ON r.id = s.run_id WHERE r.customer_id = :c ORDER BY s.seq",
                c=customer,
            )
            assert [s.step_id for s in steps] == [
                "welcome",
                "three_days",
                "second_purchase",
                "tip",
                "done",
            ]
            sent = await _rows(
                engine,
                "SELECT trigger_id, status FROM campaigns.actions WHERE customer_id = :c "
                "ORDER BY created_at",
                c=customer,
            )
            assert [(a.trigger_id, a.status) for a in sent] == [
                (f"{journey}/welcome", "delivered"),
                (f"{journey}/tip", "delivered"),
            ]
            got = [(r.json()["step"], r.headers["webhook-id"]) for r in receiver.received]
            assert [step for step, _ in got] == ["welcome", "tip"]
    finally:
        await service.stop()
