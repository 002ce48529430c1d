"""Every service SIGKILLed in the middle of an erasure (its transaction held on a row
lock the test keeps, after its tombstones were written): nothing of the half-done
erasure stays, and after a restart each service completes it exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from harness import System, service_env
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from clm_events.topics import Topics

SERVICES = ("ingest", "stage-engine", "scoring", "campaigns")
# A row of each service's that its erasure locks after writing the tombstones.
HELD = {
    "ingest": "SELECT 1 FROM ingest.identities WHERE anonymous_id = :anon FOR UPDATE",
    "stage-engine": "SELECT 1 FROM stage_engine.customers WHERE customer_id = :c FOR UPDATE",
    "scoring": "SELECT 1 FROM scoring.customers WHERE customer_id = :c FOR UPDATE",
    "campaigns": "SELECT 1 FROM campaigns.customers WHERE customer_id = :c FOR UPDATE",
}
SCHEMAS = ("ingest", "stage_engine", "scoring", "campaigns")


def _event(kind: str, subject: str, source: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": source,
        "type": kind,
        "subject": subject,
        "time": datetime.now(UTC).isoformat(),
        "data": data,
    }


async def _until(check: Any, what: str, timeout: float = 90.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)
    return result


async def _counts(conn: AsyncConnection, customer: str) -> dict[str, int]:
    """Tombstones per schema, and whether the customer is still held (1) or not (0)."""
    out = {}
    for schema in SCHEMAS:
        out[f"{schema}.tombstones"] = await conn.scalar(
            sa.text(f"SELECT count(*) FROM {schema}.privacy_tombstones")
        )
    for service, held in HELD.items():
        lookup = held.replace(" FOR UPDATE", "").replace("SELECT 1", "SELECT count(*)")
        out[service] = await conn.scalar(sa.text(lookup), {"c": customer, "anon": f"a-{customer}"})
    return out


@pytest.mark.timeout(300)
def test_each_service_killed_while_erasing_completes_the_erasure_exactly_once(
    stack_dir: Path,
) -> None:
    system = System(stack_dir, extra_env=service_env())
    system.start()
    try:
        asyncio.run(_scenario(system))
    finally:
        system.stop()


async def _scenario(system: System) -> None:
    keys = await system.make_keys()
    customer = f"crash-{uuid.uuid4().hex[:8]}"
    anon = f"a-{customer}"
    http = httpx.AsyncClient(timeout=10)
    admin = {"Authorization": f"Bearer {keys.admin}"}
    ingest = system.url("ingest")
    for source, event in [
        ("web", _event("identity.linked", customer, "web/app", {"anonymous_id": anon})),
        ("web", _event("web.signed_up", customer, "web/app", {"email": f"{customer}@x.example"})),
        ("shop", _event("purchase.completed", customer, "shop/web",
                        {"order_id": "o1", "amount": "30.00", "currency": "EUR"})),
    ]:  # fmt: skip
        headers = {"Authorization": f"Bearer {keys.sources[source]}"}
        r = await http.post(f"{ingest}/v1/events", json=event, headers=headers)
        assert r.status_code == 202, r.text

    assert system.stack.database_url
    engine = create_async_engine(system.stack.database_url)
    params = {"c": customer, "anon": anon}

    async def held_everywhere() -> bool:
        async with engine.connect() as conn:
            counts = await _counts(conn, customer)
        return all(counts[s] == 1 for s in SERVICES)

    await _until(held_everywhere, "the customer in every service")

    blocker = await engine.connect()
    transaction = await blocker.begin()
    for held in HELD.values():
        await blocker.execute(sa.text(held), params)
    r = await http.post(f"{ingest}/v1/privacy/erasures", json={"customer_id": customer},
                        headers=admin)  # fmt: skip
    assert r.status_code == 202, r.text
    request_id = r.json()["request_id"]

    async def all_waiting() -> bool:
        async with engine.connect() as conn:
            waiting = await conn.scalars(
                sa.text(
                    "SELECT DISTINCT application_name FROM pg_stat_activity "
                    "WHERE wait_event IN ('transactionid', 'tuple') "
                    "AND application_name = ANY(:names)"
                ),
                {"names": list(SERVICES)},
            )
            return set(waiting) == set(SERVICES)

    await _until(all_waiting, "every service's erasure to wait on the held rows")
    for service in SERVICES:
        system.stack.kill_service(service)
    await transaction.rollback()
    await blocker.close()

    async def orphans_gone() -> bool:
        async with engine.connect() as conn:
            left = await conn.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(:n)"),
                {"n": list(SERVICES)},
            )
            return left == 0

    await _until(orphans_gone, "the killed services' transactions to end")
    async with engine.connect() as conn:
        half_done = await _counts(conn, customer)
        recorded = await conn.scalar(
            sa.text("SELECT services FROM ingest.erasure_requests WHERE request_id = :r"),
            {"r": request_id},
        )
    # Rolled back whole: no tombstone, nothing erased, no completion recorded.
    assert half_done == {**{f"{s}.tombstones": 0 for s in SCHEMAS}, **dict.fromkeys(SERVICES, 1)}
    assert recorded == {}

    for service in SERVICES:
        system.stack.restart_service(service, wait=False)
    system.stack.wait_healthy([system.stack.spec(s) for s in SERVICES], timeout=60)

    async def completed() -> Any:
        r = await http.get(f"{ingest}/v1/privacy/erasures/{request_id}", headers=admin)
        body = r.json()
        return body if body["status"] == "completed" else None

    done = await _until(completed, "the erasure to complete after the restarts", timeout=120)
    # Each service erased the customer in its one completed run (a second run would
    # have found nothing and reported zeros).
    assert done["services"]["ingest"]["erased"]["identities"] == 1
    for service in ("stage-engine", "scoring", "campaigns"):
        assert done["services"][service]["erased"]["customers"] == 1, done
    async with engine.connect() as conn:
        after = await _counts(conn, customer)
    assert after == {**{f"{s}.tombstones": 2 for s in SCHEMAS}, **dict.fromkeys(SERVICES, 0)}
    completions = await _completions(system.bootstrap, request_id)
    assert sorted(completions) == sorted(f"{request_id}:{s}" for s in SERVICES)
    await engine.dispose()
    await http.aclose()


async def _completions(bootstrap: str, request_id: str) -> dict[str, Any]:
    """The distinct completion events of the request on the privacy topic (a copy that
    the outbox sent twice has the same id and the same content)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = Topics().privacy
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        seen: dict[str, Any] = {}
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    event = json.loads(r.value)
                    if event["type"] == "privacy.erasure_completed":
                        assert seen.setdefault(event["id"], event["data"]) == event["data"]
        return {i: d for i, d in seen.items() if d["request_id"] == request_id}
    finally:
        await consumer.stop()
