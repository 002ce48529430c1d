"""A thin producer over aiokafka: acks=all, lz4, batched sends that wait for every ack."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer


@dataclass(frozen=True)
class Message:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Producer:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "clm",
        idempotent: bool = False,
        linger_ms: int = 5,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            compression_type="lz4",
            linger_ms=linger_ms,
            enable_idempotence=idempotent,
            request_timeout_ms=request_timeout_ms,
            # We enforce our own per-event limits; this is the broker-side request ceiling.
            max_request_size=4 * 1024 * 1024,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_batch(self, messages: Iterable[Message]) -> None:
        """Send all messages and return once the broker acknowledged every one.

        Messages are appended in order, so two messages with the same key keep their order
        (the producer has one request in flight per partition). Raises on the first failure;
        callers treat the whole batch as unsent and retry it (consumers dedupe on event id).
        """
        futures = [
            await self._producer.send(m.topic, m.value, key=m.key, headers=m.headers or None)
            for m in messages
        ]
        if futures:
            await asyncio.gather(*futures)

    async def send(self, message: Message) -> None:
        await self.send_batch([message])

    async def ping(self) -> None:
        """Raise unless a broker answers a metadata request (used by /readyz)."""
        await self._producer.client.fetch_all_metadata()
