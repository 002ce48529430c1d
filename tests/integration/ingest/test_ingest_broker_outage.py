"""While the broker cannot take events, ingest answers 503 with Retry-After (never 202
for an unacknowledged event) and accepts again once the broker is back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from kit import bearer, make_key, purchase, read_topic, running

from clm_devstack.tansu import TansuBroker
from clm_events.envelope import decode_kafka_record

STRUCTURED = {"Content-Type": "application/cloudevents+json"}


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    b = TansuBroker(log_path=tmp_path_factory.mktemp("outage") / "tansu.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


async def test_503_with_retry_after_while_the_broker_is_frozen_then_recovery(
    migrated: str, broker: TansuBroker
) -> None:
    key = await make_key(migrated, "source", "shop")
    servers = broker.bootstrap_servers
    async with running(
        "clm_ingest", migrated, servers, publish_timeout=1.0, retry_after_seconds=7
    ) as (client, runtime):
        headers = bearer(key) | STRUCTURED
        ok = await client.post(
            "/v1/events", content=json.dumps(purchase("c-1", "1")), headers=headers
        )
        assert ok.status_code == 202

        broker.pause()
        try:
            down = await client.post(
                "/v1/events", content=json.dumps(purchase("c-2", "2")), headers=headers
            )
        finally:
            broker.resume()
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "7"
        assert "did not acknowledge" in down.json()["detail"]

        # The client retries as told; the producer reconnects on its own.
        for _ in range(30):
            again = await client.post(
                "/v1/events", content=json.dumps(purchase("c-2", "2")), headers=headers
            )
            if again.status_code == 202:
                break
            assert again.status_code == 503
            await asyncio.sleep(0.5)
        assert again.status_code == 202

        topic = runtime.topics.domain("purchase.completed")
        records = await read_topic(servers, topic, expect=2)
    ids = {decode_kafka_record(r.headers, r.value).id for r in records}
    assert ids == {"ord-1", "ord-2"}  # a retried event may appear twice; consumers dedupe
