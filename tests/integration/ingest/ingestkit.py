"""Helpers of the ingest tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

# The events of a domain topic ("web", "purchase", ...) with the given ids, every copy
# (keyword `timeout`, as events_with_ids).
OnTopic = Callable[..., Awaitable[list[dict[str, Any]]]]


async def events_with_ids(
    bootstrap: str, topic: str, ids: Collection[str], *, prefix: str = "", timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The events of `topic` whose id is in `ids` (or starts with a non-empty `prefix`),
    from the beginning to at least the topic's end when called, once each of `ids` came
    (or `timeout` passed), plus whatever copies arrive in a moment more. With `timeout=0`
    it reads what is on the topic now: ingest answers only after the broker acknowledged,
    so an event a request did not publish is proven absent without waiting for it."""

    def wanted(event_id: str) -> bool:
        return event_id in ids or (bool(prefix) and event_id.startswith(prefix))

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            found += [
                e for rs in batch.values() for r in rs if wanted((e := json.loads(r.value))["id"])
            ]
            if any([await consumer.position(tp) < ends[tp] for tp in tps]):
                continue  # not at the end the topic had when we were called
            if {e["id"] for e in found} >= set(ids) or not timeout:
                break
            if asyncio.get_running_loop().time() >= deadline:
                break
        if not timeout:
            return found
        batch = await consumer.getmany(timeout_ms=500)  # a duplicate would show up here
        found += [
            e for rs in batch.values() for r in rs if wanted((e := json.loads(r.value))["id"])
        ]
        return found
    finally:
        await consumer.stop()
