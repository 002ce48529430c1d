"""The system-test harness: the whole stack as `make run` starts it (clm_devstack.Stack),
API keys, sending a population through every entry point, waiting until the system is
quiet, and reading back what it decided (stages, transitions, scores, actions) over the
services' HTTP APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from population import KEY_SOURCES, segment_source, to_segment
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_devstack.procs import free_port, free_port_offset
from clm_devstack.stack import BACKENDS, ServiceSpec, Stack
from clm_events import auth

log = logging.getLogger("system")

INBOUND = "clm.events.inbound"


def service_env(
    *, smtp_port: int | None = None, fast_recovery: bool = True, settle_seconds: float = 2.0
) -> dict[str, str]:
    """Settings for system runs: local webhook and SMTP targets, no contact cap (every
    transition may fire), quick recovery after a crash, and the stage engine's settle
    window: how long a customer's events may keep arriving before time moves them (these
    runs send a year of history in minutes; see StageEngine.settle_seconds)."""
    env = {
        "CLM_CAMPAIGNS_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "CLM_CAMPAIGNS_GLOBAL_CAP_MAX": "1000000",
        "CLM_STAGE_ENGINE_SETTLE_SECONDS": str(settle_seconds),
        "CLM_LOG_LEVEL": "WARNING",
    }
    if smtp_port is not None:
        env |= {"CLM_CAMPAIGNS_SMTP_HOST": "127.0.0.1", "CLM_CAMPAIGNS_SMTP_PORT": str(smtp_port)}
    if fast_recovery:
        # A SIGKILLed member is replaced after the session timeout; the local broker
        # completes a join in about half of it.
        for svc in ("INGEST", "STAGE_ENGINE", "SCORING", "CAMPAIGNS"):
            env[f"CLM_{svc}_CONSUMER_SESSION_TIMEOUT_MS"] = "6000"
            env[f"CLM_{svc}_CONSUMER_HEARTBEAT_INTERVAL_MS"] = "1000"
        env |= {
            "CLM_CAMPAIGNS_DISPATCH_LEASE_SECONDS": "5",
            "CLM_CAMPAIGNS_RETRY_BASE_SECONDS": "0.5",
            "CLM_CAMPAIGNS_RETRY_MAX_SECONDS": "5",
            "CLM_CAMPAIGNS_MAX_ATTEMPTS": "30",
        }
    return env


@dataclass
class Keys:
    read: str
    admin: str
    sources: dict[str, str]  # key source (shop, billing, ...) -> key

    def for_source(self, ce_source: str) -> str:
        return self.sources[ce_source.split("/", 1)[0]]


async def create_keys(database_url: str) -> Keys:
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            made: dict[str, str] = {}
            for role in ("read", "admin"):
                _, made[role] = await auth.create_key(session, role=auth.Role(role), name=role)
            sources = {}
            for source in KEY_SOURCES:
                _, sources[source] = await auth.create_key(
                    session, role=auth.Role.source, name=source, source=source
                )
        return Keys(made["read"], made["admin"], sources)
    finally:
        await engine.dispose()


@dataclass
class System:
    """One stack on free ports, with its data under `data_dir`."""

    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    stack: Stack = field(init=False)
    keys: Keys | None = None

    def __post_init__(self) -> None:
        offset = free_port_offset(len(BACKENDS))
        self.stack = Stack(
            data_dir=self.data_dir,
            pg_port=free_port(),
            kafka_port=free_port(),
            services=tuple(ServiceSpec(s.name, s.package, s.port + offset) for s in BACKENDS),
            extra_env=dict(self.extra_env),
        )

    def start(self) -> None:
        """Call from the main thread: children die with the thread that started them."""
        self.stack.start_infrastructure()
        self.stack.prepare()
        self.stack.start_services(timeout=60)

    async def make_keys(self) -> Keys:
        assert self.stack.database_url
        self.keys = await create_keys(self.stack.database_url)
        return self.keys

    def stop(self) -> None:
        self.stack.stop()

    def url(self, service: str) -> str:
        return self.stack.spec(service).url

    @property
    def bootstrap(self) -> str:
        assert self.stack.bootstrap_servers
        return self.stack.bootstrap_servers

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.stack.children.items() if p.poll() is None}


# -- sending ---------------------------------------------------------------------------


def _wire(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "channel"}


@dataclass
class Sender:
    """Sends events through the Segment API, the CloudEvents API and the inbound topic,
    retrying whatever was not acknowledged (a duplicate is harmless: consumers dedupe
    on source and id). Records when each event was accepted."""

    ingest_url: str
    bootstrap: str
    keys: Keys
    accepted: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    _producer: AIOKafkaProducer | None = None
    _producer_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Sender:
        self._http = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=16))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._http is not None:
            await self._http.aclose()

    async def send_chunk(self, events: Sequence[dict[str, Any]]) -> None:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in events:
            channel = e.get("channel", "cloudevents")
            key_source = segment_source(e) if channel == "segment" else e["source"].split("/", 1)[0]
            groups.setdefault((channel, key_source), []).append(e)
        await asyncio.gather(*(self._send(ch, src, evs) for (ch, src), evs in groups.items()))

    async def _send(self, channel: str, key_source: str, events: list[dict[str, Any]]) -> None:
        while True:
            try:
                if channel == "kafka":
                    await self._kafka(events)
                else:
                    await self._http_post(channel, key_source, events)
                now = time.time()
                for e in events:
                    self.accepted.setdefault(e["id"], now)
                return
            except Exception as exc:  # anything: the stack may be mid-fault
                self.retries += 1
                log.debug("send retry (%s): %r", channel, exc)
                await asyncio.sleep(0.5)

    async def _kafka(self, events: list[dict[str, Any]]) -> None:
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    linger_ms=5,
                    request_timeout_ms=10_000,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        current = self._producer
        futures = [
            await current.send(INBOUND, json.dumps(_wire(e)).encode(), key=e["subject"].encode())
            for e in events
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*futures), 15)
        except BaseException:
            # A producer that lost its broker may hang on to stale state: start afresh.
            async with self._producer_lock:
                if self._producer is current:
                    self._producer = None
                    await asyncio.shield(current.stop())
            raise

    async def _http_post(self, channel: str, key_source: str, events: list[dict[str, Any]]) -> None:
        assert self._http is not None
        key = self.keys.sources[key_source]
        if channel == "segment":
            response = await self._http.post(
                f"{self.ingest_url}/v1/batch",
                json={"batch": [to_segment(e) for e in events]},
                auth=(key, ""),
            )
        else:
            response = await self._http.post(
                f"{self.ingest_url}/v1/events",
                content=json.dumps([_wire(e) for e in events]).encode(),
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "application/cloudevents-batch+json",
                },
            )
        if response.status_code != 202:
            if response.status_code < 500 and response.status_code != 429:
                raise AssertionError(f"ingest refused a valid batch: {response.text[:500]}")
            raise RuntimeError(f"ingest answered {response.status_code}")


async def send_paced(
    sender: Sender, events: Sequence[dict[str, Any]], rate: float, chunk: int = 100
) -> float:
    """Send in order at about `rate` events/s; return the seconds it took."""
    began = time.monotonic()
    for i in range(0, len(events), chunk):
        await sender.send_chunk(events[i : i + chunk])
        due = began + (i + chunk) / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return time.monotonic() - began


# -- reading state back ----------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Sum of every sample per metric name (labels dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


async def metrics(client: httpx.AsyncClient, system: System) -> dict[str, dict[str, float]]:
    out = {}
    for spec in system.stack.services:
        try:
            r = await client.get(f"{spec.url}/metrics", timeout=5)
            out[spec.name] = parse_metrics(r.text)
        except httpx.HTTPError:
            out[spec.name] = {}
    return out


_PROGRESS = (
    "clm_consumer_messages_total",
    "clm_outbox_published_total",
    "clm_campaigns_actions_total",
)
_BACKLOGS = (
    "clm_consumer_lag_messages",
    "clm_outbox_backlog_messages",
    "clm_campaigns_dispatch_backlog_actions",
    "clm_stage_timer_backlog_customers",
)


# Every consumer group of the services (their default group ids).
GROUPS = (
    "clm-ingest",
    "clm-ingest-deadletter-store",
    "clm-stage-engine",
    "clm-scoring",
    "clm-campaigns",
)


class CommittedLag:
    """Messages on the broker past what the services' consumer groups committed. Unlike
    the lag the services report, it also counts while a restarted service is still
    joining its group (its metrics are empty then). Partitions a group never committed
    are not counted. (The admin client's offset fetch does not decode Tansu's answer; a
    consumer that names the group but subscribes to nothing reads the same offsets.)"""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._consumers: dict[str, AIOKafkaConsumer] = {}

    async def __call__(self) -> int | None:
        """The lag, or None if the broker did not answer."""
        try:
            return await asyncio.wait_for(self._lag(), 15)
        except Exception as exc:  # broker paused or restarting: try afresh next time
            log.debug("committed lag unknown: %r", exc)
            await self.close()
            return None

    async def _lag(self) -> int:
        for group in GROUPS:
            if group not in self._consumers:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
                )
                self._consumers[group] = consumer
                await consumer.start()
        any_consumer = self._consumers[GROUPS[0]]
        await any_consumer._client.force_metadata_update()
        tps = [
            TopicPartition(topic, p)
            for topic in await any_consumer.topics()
            if topic.startswith("clm.")
            for p in any_consumer.partitions_for_topic(topic) or ()
        ]
        ends = await any_consumer.end_offsets(tps)

        async def lag(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
            committed = await consumer.committed(tp)
            return 0 if committed is None else max(0, ends[tp] - committed)

        lags = await asyncio.gather(
            *(lag(c, tp) for c in self._consumers.values() for tp in tps if ends[tp])
        )
        return sum(lags)

    async def close(self) -> None:
        consumers, self._consumers = list(self._consumers.values()), {}
        for consumer in consumers:
            with contextlib.suppress(Exception):
                await consumer.stop()


async def unpublished(system: System) -> int | None:
    """Outbox rows not yet published, counted in the database (the services' gauge is only
    refreshed every few seconds, and not while a relay backs off after an outage); None
    if the database did not answer."""
    assert system.stack.database_url
    engine = create_async_engine(system.stack.database_url)

    async def count() -> int:
        total = 0
        async with engine.connect() as conn:
            for spec in system.stack.services:
                table = importlib.import_module(f"{spec.package}.models").outbox
                query = sa.select(sa.func.count()).where(table.c.published_at.is_(None))
                total += (await conn.execute(query)).scalar_one()
        return total

    try:
        return await asyncio.wait_for(count(), 15)
    except Exception as exc:
        log.debug("outbox backlog unknown: %r", exc)
        return None
    finally:
        await engine.dispose()


async def settle(system: System, *, quiet: float = 4.0, timeout: float = 600.0) -> float:
    """Wait until nothing moves: no consumer lag (as the services report it and as their
    groups committed it), no outbox or dispatch backlog, and no progress counter changing
    for `quiet` seconds. Returns the seconds waited."""
    began = time.monotonic()
    last: tuple[float, ...] | None = None
    stable_since = time.monotonic()
    committed_lag = CommittedLag(system.bootstrap)
    try:
        async with httpx.AsyncClient() as client:
            while True:
                m = await metrics(client, system)
                healthy = all(m.values())
                progress = tuple(m[s].get(k, 0.0) for s in sorted(m) for k in _PROGRESS)
                backlog = sum(m[s].get(k, 0.0) for s in m for k in _BACKLOGS)
                now = time.monotonic()
                if progress != last or backlog > 0 or not healthy:
                    last, stable_since = progress, now
                elif now - stable_since >= quiet:
                    # Quiet; unless a group has not caught up (a consumer still joining)
                    # or a relay has rows to publish (backing off after an outage).
                    lag, rows = await committed_lag(), await unpublished(system)
                    if lag == 0 and rows == 0:
                        return time.monotonic() - began
                    log.info("quiet, but committed lag %s, unpublished rows %s", lag, rows)
                    stable_since = time.monotonic()
                if now - began > timeout:
                    raise TimeoutError(
                        f"the system did not settle in {timeout:.0f}s (backlog {backlog})"
                    )
                await asyncio.sleep(0.5)
    finally:
        await committed_lag.close()


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str):
        try:
            return round(float(value), 4)
        except ValueError:
            return value
    return value


@dataclass
class CustomerState:
    stage: str | None
    since: str | None
    transitions: list[tuple[Any, ...]]
    score: tuple[Any, ...] | None
    actions: list[dict[str, Any]]


async def snapshot(
    system: System, customers: Iterable[str], *, concurrency: int = 16, scores_only: bool = False
) -> dict[str, CustomerState]:
    """Every customer's stage, transition history, score and actions, over HTTP (only
    the score with `scores_only`)."""
    assert system.keys is not None
    headers = {"Authorization": f"Bearer {system.keys.read}"}
    se, sc, ca = system.url("stage-engine"), system.url("scoring"), system.url("campaigns")
    out: dict[str, CustomerState] = {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        triggers = (await client.get(f"{ca}/v1/triggers")).json()
        trigger_names = {t["id"]: t["definition"]["name"] for t in triggers}

        async def get(url: str, params: dict[str, Any] | None = None) -> httpx.Response:
            for attempt in range(5):
                try:
                    r = await client.get(url, params=params)
                    if r.status_code < 500:
                        return r
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                await asyncio.sleep(0.2 * (attempt + 1))
            r.raise_for_status()
            return r

        async def one(cid: str) -> None:
            async with sem:
                stage = since = None
                transitions: list[tuple[Any, ...]] = []
                r = await get(f"{sc}/v1/customers/{cid}/score")
                score = None
                if r.status_code == 200:
                    s = r.json()
                    names = ("p_alive", "churn_probability", "expected_purchases", "clv")
                    score = (*(_round(s[k]) for k in names), s["model"])
                if scores_only:
                    out[cid] = CustomerState(stage, since, transitions, score, [])
                    return
                r = await get(f"{se}/v1/customers/{cid}")
                if r.status_code == 200:
                    body = r.json()
                    stage, since = body["stage"], body["since"]
                    offset = 0
                    while True:
                        page = (
                            await get(
                                f"{se}/v1/customers/{cid}/transitions",
                                params={"limit": 1000, "offset": offset},
                            )
                        ).json()["transitions"]
                        transitions += [
                            (t["id"], t["at"], t["from_stage"], t["to_stage"], t["cause"])
                            for t in page
                        ]
                        if len(page) < 1000:
                            break
                        offset += 1000
                r = await get(f"{ca}/v1/actions", {"customer_id": cid, "limit": 1000})
                actions = [
                    {
                        "id": a["id"],
                        "trigger": trigger_names.get(a["trigger_id"], a["trigger_id"]),
                        "cause_event": a["cause_event"],
                        "status": a["status"],
                        "reason": a["suppressed_reason"],
                        "entry": a.get("entry_key"),
                        "payload": a["payload"],
                        "channel": a["channel"],
                    }
                    for a in r.json()
                ]
                out[cid] = CustomerState(stage, since, transitions, score, actions)

        await asyncio.gather(*(one(c) for c in customers))
    return out


async def create_trigger(
    system: System, definition: dict[str, Any], client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    assert system.keys is not None
    async with httpx.AsyncClient(timeout=30) as c:
        r = await (client or c).post(
            f"{system.url('campaigns')}/v1/triggers",
            json=definition,
            headers={"Authorization": f"Bearer {system.keys.admin}"},
        )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


async def served_model_adopted(system: System, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the stage engine evaluates scores under a model scoring served (scoring
    fits at its first start); return that model."""
    assert system.keys is not None
    headers = {"Authorization": f"Bearer {system.keys.read}"}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        while True:
            r = await client.get(f"{system.url('stage-engine')}/v1/lifecycle-model")
            if r.status_code == 200 and (served := r.json().get("score_model")):
                return served  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no served score model after {timeout:.0f}s: {r.text[:200]}")
            await asyncio.sleep(0.5)


async def refit(system: System) -> dict[str, Any]:
    """Fit on everything and rescore everyone, so scores depend on the data only."""
    assert system.keys is not None
    async with httpx.AsyncClient(timeout=300) as client:
        r = await client.post(
            f"{system.url('scoring')}/v1/model/refit",
            headers={"Authorization": f"Bearer {system.keys.admin}"},
        )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body
