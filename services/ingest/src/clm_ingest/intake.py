"""The HTTP path: rate limit, admit the whole request or none of it, publish, await acks.

No outbox here: the broker's acknowledgement (acks=all) is the durability point, and
202 is answered only after every event of the request has it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from clm_events.auth import ApiKey
from clm_events.envelope import Event
from clm_events.outbox import CONTENT_TYPE
from clm_events.producer import Message, Producer
from clm_events.topics import Topics
from clm_ingest import metrics
from clm_ingest.domain.gate import Admitted, admit, parse_each
from clm_ingest.domain.rate_limit import RateLimiter


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Intake:
    def __init__(
        self,
        *,
        producer: Producer,
        topics: Topics,
        limiter: RateLimiter,
        max_event_bytes: int,
        publish_timeout: float,
        retry_after: int,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._limiter = limiter
        self._max_event_bytes = max_event_bytes
        self._publish_timeout = publish_timeout
        self._retry_after = retry_after

    async def accept(
        self,
        caller: ApiKey,
        items: Sequence[Any],
        parse: Callable[[Any], Event],
        *,
        batch: bool,
        channel: str,
    ) -> Answer:
        source = caller.source or ""
        if not items:
            return Answer(400, {"detail": "the batch is empty"})
        metrics.REQUEST_EVENTS.labels(channel).observe(len(items))
        wait = self._limiter.take(caller.id, len(items))
        if wait:
            metrics.EVENTS_REJECTED.labels("unknown", source, "rate_limited").inc(len(items))
            return Answer(
                429,
                {"detail": f"this key is over its event rate; retry in {wait} s"},
                {"Retry-After": str(wait)},
            )
        verdict = admit(
            parse_each(items, parse),
            key_source=source,
            max_event_bytes=self._max_event_bytes,
            batch=batch,
        )
        if verdict.problems:
            for p in verdict.problems:
                metrics.EVENTS_REJECTED.labels(p.event_type, source, p.kind.value).inc()
            return Answer(
                verdict.status,
                {
                    "detail": verdict.summary(len(items)),
                    "errors": [p.to_dict() for p in verdict.problems],
                },
            )
        if not await self._publish(verdict.admitted, channel):
            for event_type, count in Counter(a.event.type for a in verdict.admitted).items():
                metrics.EVENTS_REJECTED.labels(event_type, source, "broker_unavailable").inc(count)
            return Answer(
                503,
                {
                    "detail": "the event broker did not acknowledge the events in time; "
                    "send the same request again (events are deduplicated by source and id)"
                },
                {"Retry-After": str(self._retry_after)},
            )
        for event_type, count in Counter(a.event.type for a in verdict.admitted).items():
            metrics.EVENTS_ACCEPTED.labels(event_type, source, channel).inc(count)
        return Answer(202, {"accepted": len(verdict.admitted)})

    async def _publish(self, admitted: Sequence[Admitted], channel: str) -> bool:
        messages = [
            Message(
                topic=self._topics.domain(a.event.type),
                key=a.event.subject.encode(),
                value=a.value,
                headers=[CONTENT_TYPE],
            )
            for a in admitted
        ]
        started = time.perf_counter()
        try:
            # Bounded: with the broker away, sends otherwise wait out the producer's own
            # (longer) request timeout, holding the client's connection meanwhile.
            async with asyncio.timeout(self._publish_timeout):
                await self._producer.send_batch(messages)
        except (KafkaError, TimeoutError):
            return False
        metrics.PUBLISH_SECONDS.labels(channel).observe(time.perf_counter() - started)
        return True
