"""Malformed messages on the inbound topic (random bytes, wrong types, huge fields) are
all dead-lettered while valid traffic flows. Bounded here; CLM_FUZZ_MESSAGES=10000 for
the long run."""

from __future__ import annotations

import json
import os
import random
from typing import Any

from aiokafka import AIOKafkaProducer
from kit import purchase, read_topic, running

N_BAD = int(os.environ.get("CLM_FUZZ_MESSAGES", "400"))


def _malformed(rng: random.Random, i: int) -> bytes:
    good = purchase(f"cust-{i}", f"bad-{i}")
    kind = i % 6
    if kind == 0:
        return rng.randbytes(rng.randint(0, 200))
    if kind == 1:  # wrong types
        good["data"]["amount"] = rng.choice([[], {}, True, "12,5.0", None])
    elif kind == 2:  # huge field
        good["data"]["order_id"] = "x" * rng.randint(33_000, 60_000)
    elif kind == 3:  # unknown or derived type
        good["type"] = rng.choice(["purchase.teleported", "lifecycle.stage_changed", 42])
    elif kind == 4:  # missing envelope fields
        for name in rng.sample(["id", "source", "specversion", "type"], 2):
            del good[name]
    else:  # not an object
        return json.dumps(rng.choice([[1, 2], "event", 3.5, None])).encode()
    return json.dumps(good).encode()


async def test_malformed_inbound_messages_are_dead_lettered_while_valid_ones_flow(
    migrated: str, bootstrap_servers: str
) -> None:
    rng = random.Random(5)
    async with running("clm_ingest", migrated, bootstrap_servers) as (_, runtime):
        topics = runtime.topics
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
        await producer.start()
        valid = 0
        try:
            futures: list[Any] = []
            for i in range(N_BAD):
                futures.append(await producer.send(topics.inbound, _malformed(rng, i), key=b"k"))
                if i % 10 == 0:
                    event = purchase(f"cust-ok-{i}", f"ok-{i}")
                    futures.append(
                        await producer.send(
                            topics.inbound,
                            json.dumps(event).encode(),
                            key=event["subject"].encode(),
                        )
                    )
                    valid += 1
            for f in futures:
                await f
        finally:
            await producer.stop()
        dead = await read_topic(bootstrap_servers, topics.deadletter, expect=N_BAD, timeout=90)
        routed = await read_topic(bootstrap_servers, topics.domain("purchase.completed"),
                                  expect=valid, timeout=30)  # fmt: skip
    assert len(dead) == N_BAD
    assert {json.loads(r.value)["id"] for r in routed} == {
        f"ord-ok-{i}" for i in range(0, N_BAD, 10)
    }
