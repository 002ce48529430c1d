"""The dead-letter store over HTTP: a bad inbound message shows up with its reason and
payload for a read key; an admin replays it with the fix and it reaches its domain topic;
a replay of a still-bad body comes back as a new dead letter marked as a replay."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta
from typing import Any

import httpx
from aiokafka.structs import ConsumerRecord
from kit import bearer, make_key, produce, purchase, read_topic
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_events.privacy import Tombstones
from clm_ingest import deadletter_store as store
from clm_ingest.models import privacy_tombstones

TOMBSTONES = Tombstones(privacy_tombstones, b"test key", timedelta(days=1))


async def _listed(
    client: httpx.AsyncClient, key: str, expect: int, **params: Any
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        answer = await client.get("/v1/deadletters", params=params, headers=bearer(key))
        assert answer.status_code == 200, answer.text
        rows = answer.json()["deadletters"]
        if len(rows) >= expect:
            return rows
        await asyncio.sleep(0.2)
    return rows


async def test_dead_letters_are_listed_and_replayed_with_a_fix(
    ingest: tuple[httpx.AsyncClient, Any], migrated: str, bootstrap_servers: str
) -> None:
    client, runtime = ingest
    read, admin = await make_key(migrated, "read"), await make_key(migrated, "admin")
    broken = purchase("dl-cust", "dl-1")
    del broken["data"]["currency"]
    await produce(bootstrap_servers, runtime.topics.inbound, [broken, b"\xff not json"])

    # The database is shared by other tests' topics: look at this test's inbound topic only.
    mine = {"source_topic": runtime.topics.inbound}
    rows = await _listed(client, read, expect=2, **mine)
    assert len(rows) == 2
    by_payload = {r["payload"]: r for r in rows}
    missing = by_payload[json.dumps(broken)]
    assert "currency" in missing["reason"]
    assert missing["reason"].count("invalid event") == 1  # said once, not once per layer
    assert missing["source_topic"] == runtime.topics.inbound
    assert missing["key"] == "dl-cust" and missing["replayed_at"] is None
    only = await _listed(client, read, expect=1, reason="currency", **mine)
    assert [r["id"] for r in only] == [missing["id"]]

    # Reading is not changing: a read key cannot replay; unknown ids are 404.
    denied = await client.post(f"/v1/deadletters/{missing['id']}/replay", headers=bearer(read))
    assert denied.status_code == 403
    unknown = await client.post("/v1/deadletters/0-999999/replay", headers=bearer(admin))
    assert unknown.status_code == 404

    fixed = {**broken, "data": {**broken["data"], "currency": "EUR"}}
    answer = await client.post(
        f"/v1/deadletters/{missing['id']}/replay",
        json={"payload": json.dumps(fixed)},
        headers=bearer(admin),
    )
    assert answer.status_code == 202, answer.text
    routed = await read_topic(
        bootstrap_servers, runtime.topics.domain("purchase.completed"), expect=1
    )
    assert [json.loads(r.value)["id"] for r in routed] == [fixed["id"]]
    rows = await _listed(client, read, expect=2, **mine)
    assert {r["id"]: r for r in rows}[missing["id"]]["replayed_at"] is not None

    # Replaying the garbage as it is dead-letters it again, marked as a replay of the first.
    garbage = by_payload["\ufffd not json"]
    answer = await client.post(f"/v1/deadletters/{garbage['id']}/replay", headers=bearer(admin))
    assert answer.status_code == 202
    rows = await _listed(client, read, expect=3, **mine)
    again = [r for r in rows if r["replay_of"]]
    assert len(again) == 1 and again[0]["replay_of"].endswith(garbage["id"].replace("-", "/"))


async def test_a_dead_letter_with_nul_in_its_headers_is_stored_escaped(migrated: str) -> None:
    """Headers are bytes anyone can write, and text columns refuse U+0000: such a row is
    kept escaped instead of failing the insert, which would stall the store for ever."""
    offset = random.randrange(10**12, 10**13)  # the table is shared with other tests
    record = ConsumerRecord(
        topic="clm.events.deadletter",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k\x00",
        value=b"{}",
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=2,
        headers=[
            ("clm_dlq_reason", b"invalid event: id: \x00"),
            ("clm_dlq_topic", b"t\x00"),
            ("clm_dlq_group", b"g\x00"),
            ("clm_dlq_at", b"not a time"),
            ("x-\x00", b"v"),
        ],
    )
    engine = create_async_engine(migrated)
    try:
        async with async_sessionmaker(engine).begin() as session:
            await store.store(session, [record], TOMBSTONES)
        async with async_sessionmaker(engine)() as session:
            row = await store.get_row(session, 0, offset)
    finally:
        await engine.dispose()
    assert row is not None
    shown = store.describe(row)
    assert (shown["reason"], shown["source_topic"], shown["group"]) == (
        "invalid event: id: \\u0000",
        "t\\u0000",
        "g\\u0000",
    )
    assert shown["headers"] == {"x-\\u0000": "v"}
