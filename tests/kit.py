"""Test helpers shared by every test folder: events, producing and reading topics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord


def purchase(customer: str, order: str, amount: str = "10.00", **overrides: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": f"ord-{order}",
        "source": "shop/checkout",
        "type": "purchase.completed",
        "subject": customer,
        "time": datetime.now(UTC).isoformat(),
        "data": {"order_id": order, "amount": amount, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any]],
    key: Callable[[bytes | dict[str, Any]], bytes | None] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            k = key(v) if key else (v["subject"].encode() if isinstance(v, dict) else b"garbage")
            await producer.send_and_wait(topic, encode(v) if isinstance(v, dict) else v, key=k)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 15.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message on the topic from the beginning, once `expect` arrived (or timeout)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
        # Anything more than expected would be a duplicate: give it a moment to show up.
        batch = await consumer.getmany(timeout_ms=300)
        for records in batch.values():
            out.extend(records)
        return out
    finally:
        await consumer.stop()
