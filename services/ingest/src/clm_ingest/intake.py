"""The HTTP path: rate limit, admit, dedupe, resolve identities, publish, await acks.

A CloudEvents request is admitted whole or not at all. A Segment request follows
Segment's own contract: its valid messages are published and each invalid one is
dead-lettered, so one bad message never costs the good ones (Segment libraries do not
retry a 4xx, so a refused batch would be lost).

No outbox here: the broker's acknowledgement (acks=all) is the durability point, and 202
is answered only after every message of the request has it. The transaction that claims
the events' (source, id) and records identity links stays open until then: a request the
broker did not take leaves no claim behind, so its retry is published; one that was
published is a duplicate when a client retries it, and nothing of it is published again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.auth import ApiKey
from clm_events.catalog import topic_domain
from clm_events.db import is_retryable
from clm_events.envelope import Event, encode_structured
from clm_events.idempotency import claim_new
from clm_events.outbox import CONTENT_TYPE
from clm_events.producer import Message, Producer
from clm_events.topics import Topics
from clm_ingest import metrics
from clm_ingest.domain.gate import Admitted, Problem, admit, parse_each
from clm_ingest.domain.identity import REASONS, Outcome
from clm_ingest.domain.rate_limit import RateLimiter
from clm_ingest.identity import IdentityGraph

# The dead letter of a refused item, from its position in the request and its problems.
DeadLetterer = Callable[[int, list[Problem]], Message]


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class _Unavailable(Exception):
    """The broker or the database did not take the request: nothing of it counts."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason  # of the rejection metric


@dataclass(frozen=True)
class _Published:
    by_type: Counter[str]
    duplicates: int
    refused_links: list[tuple[int, Outcome]]


class Intake:
    def __init__(
        self,
        *,
        producer: Producer,
        topics: Topics,
        limiter: RateLimiter,
        sessions: async_sessionmaker[AsyncSession],
        processed: sa.Table,
        claim_group: str,
        graph: IdentityGraph,
        max_event_bytes: int,
        publish_timeout: float,
        retry_after: int,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._limiter = limiter
        self._sessions = sessions
        self._processed = processed
        self._claim_group = claim_group
        self._graph = graph
        self._max_event_bytes = max_event_bytes
        self._publish_timeout = publish_timeout
        self._retry_after = retry_after

    async def accept(
        self,
        caller: ApiKey,
        items: Sequence[Any],
        parse: Callable[[Any], Sequence[Event]],
        *,
        batch: bool,
        channel: str,
        deadletter: DeadLetterer | None = None,
    ) -> Answer:
        """Publish what the request carries. With `deadletter` (Segment) each invalid item
        is dead-lettered and the rest published; without, any problem refuses it all."""
        source = caller.source or ""
        if not items and deadletter is None:
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
        for p in verdict.problems:
            metrics.EVENTS_REJECTED.labels(p.event_type, source, p.kind.value).inc()
        if verdict.problems and deadletter is None:
            return Answer(
                verdict.status,
                {
                    "detail": verdict.summary(len(items)),
                    "errors": [p.to_dict() for p in verdict.problems],
                },
            )

        refused = verdict.refused
        admitted = [a for a in verdict.admitted if a.position not in refused]
        dead = [deadletter(i, problems) for i, problems in refused.items()] if deadletter else []
        try:
            published = await self._publish(admitted, dead, channel)
        except _Unavailable as exc:
            for event_type, count in Counter(a.event.type for a in admitted).items():
                metrics.EVENTS_REJECTED.labels(event_type, source, exc.reason).inc(count)
            return Answer(
                503,
                {
                    "detail": f"{exc.detail}; send the same request again (events are "
                    "deduplicated by source and id)"
                },
                {"Retry-After": str(self._retry_after)},
            )
        for published_type, count in published.by_type.items():
            metrics.EVENTS_ACCEPTED.labels(published_type, source, channel).inc(count)
        metrics.EVENTS_DUPLICATE.labels(channel).inc(published.duplicates)

        body: dict[str, Any] = {"accepted": len(items) - len(refused)}
        if refused:
            body["deadlettered"] = [p.to_dict() for ps in refused.values() for p in ps]
        if published.refused_links:
            body["links_refused"] = [
                {**({"index": i} if batch else {}), "reason": o.value, "detail": REASONS[o]}
                for i, o in published.refused_links
            ]
        if published.duplicates:
            body["duplicates"] = published.duplicates
        return Answer(202, body)

    async def _publish(
        self, admitted: Sequence[Admitted], dead: Sequence[Message], channel: str
    ) -> _Published:
        started = time.perf_counter()
        try:
            async with self._sessions.begin() as session:
                fresh = await self._claim(session, admitted)
                resolved = await self._graph.resolve(session, [a.event for a in fresh])
                messages: list[Message] = []
                by_type: Counter[str] = Counter()
                refused_links: list[tuple[int, Outcome]] = []
                for item, event in zip(fresh, resolved, strict=True):
                    if isinstance(event, Outcome):
                        refused_links.append((item.position, event))
                        continue
                    # Re-encoded only when identity resolution changed the subject.
                    value = item.value if event is item.event else encode_structured(event)
                    messages.append(self._message(event, value))
                    by_type[event.type] += 1
                await self._send([*messages, *dead])  # raises: the claims roll back
        except _Unavailable:
            raise
        except Exception as exc:
            if is_retryable(exc):
                raise _Unavailable(
                    "the database did not answer in time", "database_unavailable"
                ) from exc
            raise
        metrics.PUBLISH_SECONDS.labels(channel).observe(time.perf_counter() - started)
        return _Published(by_type, len(admitted) - len(fresh), refused_links)

    async def _claim(self, session: AsyncSession, admitted: Sequence[Admitted]) -> list[Admitted]:
        """The events not published before (nor earlier in this request)."""
        # Sorted: concurrent requests lock the keys they share in one order, no deadlock.
        keys = sorted({(a.event.source, a.event.id) for a in admitted})
        new = await claim_new(session, self._processed, self._claim_group, keys)
        fresh = []
        for a in admitted:
            key = (a.event.source, a.event.id)
            if key in new:
                new.discard(key)
                fresh.append(a)
        return fresh

    def _message(self, event: Event, value: bytes) -> Message:
        return Message(
            topic=self._topics.domain(topic_domain(event.type)),
            key=event.subject.encode(),
            value=value,
            headers=[CONTENT_TYPE],
        )

    async def _send(self, messages: Sequence[Message]) -> None:
        try:
            # Bounded: with the broker away, sends otherwise wait out the producer's own
            # (longer) request timeout, holding the client's connection meanwhile.
            async with asyncio.timeout(self._publish_timeout):
                await self._producer.send_batch(messages)
        except (KafkaError, TimeoutError):
            raise _Unavailable(
                "the event broker did not acknowledge the events in time", "broker_unavailable"
            ) from None
