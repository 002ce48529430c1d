"""`clm-ingest deadletter list|replay`: after the cause of a dead-letter is fixed, replay
sends the original message through the ingest gate again; it reaches its domain topic
once, however often the replay is run, and a still-bad message does not loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kit import produce, purchase, read_topic
from typer.testing import CliRunner

from clm_events.deadletter import reason_of
from clm_events.settings import ClmSettings
from clm_events.topics import Topics, ensure_topics
from clm_ingest.cli import app
from clm_ingest.config import Settings
from clm_ingest.main import create_app

PARTITIONS = 2


@asynccontextmanager
async def ingest_gate(
    database_url: str, bootstrap: str, prefix: str, **overrides: Any
) -> AsyncIterator[None]:
    """Ingest's inbound gate on a fixed topic prefix and group, so a restart with other
    settings continues where the last one stopped (as a redeploy does)."""
    settings = Settings(
        group_id=f"{prefix}ingest",
        consumer_session_timeout_ms=6000,
        consumer_heartbeat_interval_ms=1000,
        **overrides,
        common=ClmSettings(
            database_url=database_url,
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            topic_partitions=PARTITIONS,
            log_json=False,
        ),
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield


async def test_replay_after_a_fix_delivers_once_and_still_bad_messages_do_not_loop(
    migrated: str, bootstrap_servers: str
) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix, PARTITIONS)
    await ensure_topics(bootstrap_servers, topics.all())
    env = {
        "CLM_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "CLM_TOPIC_PREFIX": prefix,
        "CLM_TOPIC_PARTITIONS": str(PARTITIONS),
        "CLM_INGEST_GROUP_ID": f"{prefix}ingest",
    }

    async def cli(*args: str) -> str:
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["deadletter", *args], env=env, catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        return result.output

    # A 2 KB order is over the old 1 KB limit; the garbage is bad whatever the limit.
    big = purchase("cust-1", "1", data={**purchase("c", "1")["data"], "note": "x" * 2000})
    garbage = b"\x00\xffnot an event"
    async with ingest_gate(migrated, bootstrap_servers, prefix, max_event_bytes=1024):
        await produce(bootstrap_servers, topics.inbound, [big, garbage], key=lambda _: b"cust-1")
        dead = await read_topic(bootstrap_servers, topics.deadletter, expect=2)
    assert len(dead) == 2

    listed = await cli("list")
    assert f"{topics.inbound}/" in listed and "the limit is 1024" in listed
    assert "invalid event" in listed and listed.count("\n") >= 2
    only_big = await cli("list", "--reason", "LIMIT IS 1024")
    assert "ord-1" not in only_big and len(only_big.strip().splitlines()) == 1 + 1  # + count

    # The limit is raised (a redeploy); now the order passes the gate.
    async with ingest_gate(migrated, bootstrap_servers, prefix):
        dry = await cli("replay", "--reason", "limit is 1024", "--dry-run")
        assert "would replay 1 messages" in dry
        assert len(await read_topic(bootstrap_servers, topics.inbound, expect=3, timeout=1)) == 2

        first = await cli("replay", "--reason", "limit is 1024")
        assert "replayed 1 messages" in first
        again = await cli("replay", "--reason", "limit is 1024")
        assert "replayed 0 messages" in again  # the group remembers

        # A replay of everything sends the order once more (ingest dedupes it on its id)
        # and the garbage, which is dead-lettered again, marked as a replay.
        everything = await cli("replay")
        assert "replayed 2 messages" in everything
        dead = await read_topic(bootstrap_servers, topics.deadletter, expect=3)
        orders = await read_topic(
            bootstrap_servers, topics.domain("purchase.completed"), expect=2, timeout=3
        )
        assert "replayed 0 messages" in await cli("replay")  # the re-dead-lettered one is skipped

    assert [json.loads(r.value)["id"] for r in orders] == ["ord-1"]
    assert len(dead) == 3
    redead = dead[-1]
    assert redead.value == garbage
    assert dict(redead.headers)["clm_replay_of"].startswith(f"{topics.deadletter}/".encode())
    assert reason_of(redead.headers)["reason"].startswith("invalid event:")
