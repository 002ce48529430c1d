"""Campaigns: stage transitions in -> signed webhooks received by a local receiver.

Self-contained: starts its own PostgreSQL and broker, migrates, runs the campaigns
service under uvicorn in a subprocess with one webhook trigger, produces transitions at a
set rate and times each from its event time to its arrival at a loopback HTTP receiver.
The baseline, measured in the same run, is the same receiver hit directly by an httpx
client at the dispatcher's concurrency: the ceiling of webhook delivery on this machine.

    python services/campaigns/bench/bench_campaigns.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import clm_campaigns
from clm_campaigns.models import SCHEMA
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.procs import free_port
from clm_devstack.tansu import TansuBroker
from clm_events import auth
from clm_events.envelope import encode_structured, new_event
from clm_events.migrations import migrate, migrate_auth
from clm_events.topics import Topics, ensure_topics

PARTITIONS = 6
CONCURRENCY = 16  # the dispatcher's default


class Receiver:
    """A minimal HTTP/1.1 server: records arrival time minus the event time in the body."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ids: set[str] = set()
        self.arrivals: list[float] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # idle keep-alive connections
                writer.close()
            await asyncio.sleep(0.2)  # their handlers see EOF and end
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, webhook_id = 0, ""
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "webhook-id":
                        webhook_id = value.strip()
                body = await reader.readexactly(length)
                now = time.time()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                sent = json.loads(body).get("sent") if body.startswith(b"{") else None
                if webhook_id and webhook_id not in self.ids:
                    self.ids.add(webhook_id)
                    self.arrivals.append(now)
                    if sent:
                        self.latencies.append(now - datetime.fromisoformat(sent).timestamp())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def baseline(url: str, n: int) -> float:
    """Webhook POSTs/s straight from an httpx client to the receiver."""
    body = json.dumps({"customer": "c", "sent": None}).encode()
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY)) as client:

        async def one(i: int) -> None:
            async with gate:
                await client.post(url, content=body, headers={"webhook-id": f"base-{i}"})

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


async def produce(bootstrap: str, topic: str, n: int, rate: float, run: str) -> None:
    """n transitions, one per customer, at `rate` per second (10 ms ticks)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        started, sent, pending = time.perf_counter(), 0, []
        while sent < n:
            due = min(n, int((time.perf_counter() - started) * rate) + 1)
            for i in range(sent, due):
                customer = f"{run}-c{i}"
                now = datetime.now(UTC)
                event = new_event(
                    "lifecycle.stage_changed",
                    id=f"{run}-t{i}",
                    source="bench/stage-engine",
                    subject=customer,
                    time=now,
                    data={
                        "from_stage": "active",
                        "to_stage": "at_risk",
                        "at": now,
                        "cause": "bench",
                        "facts": {"revenue_total": 120.0, "name": f"Customer {i}"},
                    },
                )
                pending.append(
                    await producer.send(topic, encode_structured(event), key=customer.encode())
                )
            sent = due
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready")


async def make_admin_key(url: str) -> str:
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            _, plaintext = await auth.create_key(session, role=auth.Role.admin, name="bench")
        return plaintext
    finally:
        await engine.dispose()


async def until(done: Callable[[], bool], timeout: float) -> None:
    for _ in range(int(timeout * 10)):
        if done():
            return
        await asyncio.sleep(0.1)


def start_service(db_url: str, bootstrap: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CLM_DATABASE_URL": db_url,
        "CLM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CLM_TOPIC_PARTITIONS": str(PARTITIONS),
        "CLM_LOG_LEVEL": "WARNING",
        "CLM_CAMPAIGNS_PORT": str(port),
        "CLM_CAMPAIGNS_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "CLM_CAMPAIGNS_GLOBAL_CAP_MAX": "100",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from clm_campaigns.cli import app; app()", "serve"], env=env
    )


async def run(db_url: str, bootstrap: str, port: int, n: int, rate: float) -> dict[str, float]:
    receiver = Receiver()
    hook = await receiver.start()
    try:
        base = await baseline(hook, min(n, 5000))
        receiver.ids.clear()
        receiver.arrivals.clear()
        topics = Topics("clm.", PARTITIONS)
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{base_url}/readyz")
        key = await make_admin_key(db_url)
        trigger = {
            "name": "bench: at risk",
            "on": {"kind": "transition", "from_stages": ["active"], "to_stage": "at_risk"},
            "condition": "facts.revenue_total > 100.0",
            "action": {
                "channel": "webhook",
                "url": hook,
                "payload": '{"customer": "{{ customer.id }}", "name": '
                '{{ customer.facts.name | tojson }}, "sent": "{{ event.time }}"}',
            },
        }
        async with httpx.AsyncClient(base_url=base_url) as client:
            r = await client.post(
                "/v1/triggers", json=trigger, headers={"Authorization": f"Bearer {key}"}
            )
            r.raise_for_status()
        # Warm-up: the consumer group joins and connections open.
        await produce(bootstrap, topics.transitions, 50, 500, f"warm{uuid.uuid4().hex[:6]}")
        await until(lambda: len(receiver.ids) >= 50, 60)
        receiver.ids.clear()
        receiver.arrivals.clear()
        receiver.latencies.clear()

        started = time.time()
        await produce(bootstrap, topics.transitions, n, rate, f"run{uuid.uuid4().hex[:6]}")
        await until(lambda: len(receiver.ids) >= n, 120)
        lat = sorted(receiver.latencies)
        got = len(receiver.ids)
        elapsed = (max(receiver.arrivals) - started) if receiver.arrivals else float("inf")
        return {
            "received": got,
            "actions_per_s": got / elapsed,
            "baseline_per_s": base,
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        }
    finally:
        await receiver.stop()


def main(quick: bool) -> None:
    n, rate = (2_000, 1_000.0) if quick else (20_000, 2_000.0)
    with tempfile.TemporaryDirectory(prefix="clm-bench-campaigns-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        broker = TansuBroker(log_path=Path(tmp) / "tansu.log")
        pg.start()
        broker.start()
        try:
            url = pg.url()
            migrate_auth(url)
            migrate(Path(clm_campaigns.__file__).parent / "migrations", url=url, schema=SCHEMA)
            asyncio.run(ensure_topics(broker.bootstrap_servers, Topics("clm.", PARTITIONS).all()))
            port = free_port()
            service = start_service(url, broker.bootstrap_servers, port)
            try:
                result = asyncio.run(run(url, broker.bootstrap_servers, port, n, rate))
            finally:
                service.terminate()
                service.wait(timeout=30)
        finally:
            broker.stop()
            pg.stop()
    rows = [
        ("what", "figure", "ratio to baseline"),
        ("baseline: direct webhook POSTs/s", f"{result['baseline_per_s']:,.0f}", "1.00"),
        (
            "campaigns: transitions -> webhooks/s",
            f"{result['actions_per_s']:,.0f}",
            f"{result['actions_per_s'] / result['baseline_per_s']:.2f}",
        ),
        ("transition -> webhook p50 (s)", f"{result['p50']:.3f}", ""),
        ("transition -> webhook p99 (s)", f"{result['p99']:.3f}", "goal: < 1 s at 2k/s"),
    ]
    print(
        f"\ncampaigns benchmark: {n:,} transitions offered at {rate:,.0f}/s "
        f"({'quick' if quick else 'full'} run); {int(result['received']):,} webhooks received"
    )
    widths = [max(len(str(r[i])) for r in rows) + 2 for i in range(3)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (2k transitions)")
    main(parser.parse_args().quick)
