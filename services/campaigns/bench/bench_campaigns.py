"""Campaigns: stage transitions in -> signed webhooks received by a local receiver.

Self-contained: starts its own PostgreSQL and broker, migrates, runs the campaigns
service under uvicorn in a subprocess with one webhook trigger, produces transitions at a
set rate and times each from its event time to its arrival at a loopback HTTP receiver.
The receiver runs in a process of its own, so it never competes with the clients it
measures. The baseline, measured in the same run, is the service's own webhook sender
(same client, signing, concurrency) hitting that receiver directly: the ceiling of webhook
delivery on this machine.

    python services/campaigns/bench/bench_campaigns.py [--quick] [--rate R] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import clm_campaigns
from clm_campaigns.channels import WebhookSender
from clm_campaigns.config import Settings
from clm_campaigns.models import SCHEMA
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.procs import free_port
from clm_devstack.tansu import TansuBroker
from clm_events import auth
from clm_events.envelope import encode_structured, new_event
from clm_events.migrations import migrate, migrate_auth
from clm_events.topics import Topics, ensure_topics

PARTITIONS = 6
LOCAL = '["127.0.0.1/32"]'


class Receiver:
    """A minimal HTTP/1.1 server in a child process. It records, per new webhook-id, the
    arrival time and the arrival minus the event time in the body; the parent reads the
    count live and the figures at the end."""

    def __init__(self) -> None:
        self._count = multiprocessing.Value("i", 0, lock=False)
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.Process(
            target=_receiver_main, args=(child, self._count), daemon=True
        )

    def start(self) -> str:
        """Start before any event loop or thread exists in the parent (it forks)."""
        self._process.start()
        port: int = self._conn.recv()
        return f"http://127.0.0.1:{port}/hook"

    @property
    def count(self) -> int:
        return int(self._count.value)

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def collect(self) -> tuple[list[float], list[float]]:
        """Latencies and arrival times of the webhooks received since the last reset."""
        self._conn.send("collect")
        latencies, arrivals = self._conn.recv()
        return latencies, arrivals

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(timeout=5)


def _receiver_main(conn: Connection, count: Any) -> None:
    ids: set[str] = set()
    latencies: list[float] = []
    arrivals: list[float] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                if webhook_id and webhook_id not in ids:
                    ids.add(webhook_id)
                    arrivals.append(now)
                    count.value += 1
                    sent = json.loads(body).get("sent") if body.startswith(b"{") else None
                    if sent:
                        latencies.append(now - datetime.fromisoformat(sent).timestamp())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "reset":
                ids.clear()
                latencies.clear()
                arrivals.clear()
                count.value = 0
                conn.send(None)
            elif command == "collect":
                conn.send((latencies, arrivals))
            else:
                server.close()
                return

    asyncio.run(main())


async def baseline(url: str, n: int) -> float:
    """Webhook POSTs/s straight from the service's sender to the receiver, with as many
    in flight as the dispatcher has."""
    settings = Settings(webhook_allowed_networks=["127.0.0.1/32"])
    sender = WebhookSender(settings)
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    payload = json.dumps({"customer": "c", "sent": None})
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            outcome = await sender.send(
                action_id=f"base-{i}", target={"url": url}, payload=payload, secret=secret
            )
            assert outcome.ok, outcome.error

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(settings.dispatch_concurrency)))
        return n / (time.perf_counter() - started)
    finally:
        await sender.close()


async def produce(bootstrap: str, topic: str, n: int, rate: float, run: str) -> float:
    """n transitions, one per customer, at `rate` per second (10 ms ticks); returns the
    rate achieved."""
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
        return n / (time.perf_counter() - started)
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
        "CLM_CAMPAIGNS_WEBHOOK_ALLOWED_NETWORKS": LOCAL,
        "CLM_CAMPAIGNS_GLOBAL_CAP_MAX": "100",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from clm_campaigns.cli import app; app()", "serve"], env=env
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(
    receiver: Receiver,
    hook: str,
    service: int,
    db_url: str,
    bootstrap: str,
    port: int,
    n: int,
    rate: float,
) -> dict[str, float]:
    base = await baseline(hook, min(n, 10_000))
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
    receiver.reset()
    await produce(bootstrap, topics.transitions, 200, 500, f"warm{uuid.uuid4().hex[:6]}")
    await until(lambda: receiver.count >= 200, 60)
    receiver.reset()

    cpu = cpu_seconds(service)
    started = time.time()
    offered = await produce(bootstrap, topics.transitions, n, rate, f"run{uuid.uuid4().hex[:6]}")
    await until(lambda: receiver.count >= n, 120)
    cpu = cpu_seconds(service) - cpu
    latencies, arrivals = receiver.collect()
    lat = sorted(latencies)
    elapsed = (max(arrivals) - started) if arrivals else float("inf")
    return {
        "received": len(arrivals),
        "offered_per_s": offered,
        "actions_per_s": len(arrivals) / elapsed,
        "baseline_per_s": base,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "max": lat[-1] if lat else float("nan"),
        "cpu_ms": 1000 * cpu / max(1, len(arrivals)),
    }


def main(rate: float, seconds: float, label: str) -> None:
    n = int(rate * seconds)
    receiver = Receiver()
    hook = receiver.start()
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
                result = asyncio.run(
                    run(receiver, hook, service.pid, url, broker.bootstrap_servers, port, n, rate)
                )
            finally:
                service.terminate()
                service.wait(timeout=30)
        finally:
            broker.stop()
            pg.stop()
            receiver.stop()
    base = result["baseline_per_s"]
    rows = [
        ("what", "figure", "ratio to baseline"),
        ("baseline: direct webhook POSTs/s", f"{base:,.0f}", "1.00"),
        ("transitions offered/s", f"{result['offered_per_s']:,.0f}", ""),
        (
            "campaigns: transitions -> webhooks/s",
            f"{result['actions_per_s']:,.0f}",
            f"{result['actions_per_s'] / base:.2f}",
        ),
        ("transition -> webhook p50 (s)", f"{result['p50']:.3f}", ""),
        ("transition -> webhook p99 (s)", f"{result['p99']:.3f}", "goal: < 1 s at 2k/s"),
        ("transition -> webhook max (s)", f"{result['max']:.3f}", ""),
        # Load-independent: on a shared machine the rates above depend on what else runs.
        ("service CPU ms per webhook received", f"{result['cpu_ms']:.2f}", ""),
    ]
    print(
        f"\ncampaigns benchmark: {n:,} transitions offered at {rate:,.0f}/s for {seconds:g} s "
        f"({label} run); {int(result['received']):,} webhooks received"
    )
    widths = [max(len(str(r[i])) for r in rows) + 2 for i in range(3)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (2 s instead of 45 s)")
    parser.add_argument("--rate", type=float, default=2_000.0, help="transitions/s offered")
    parser.add_argument("--seconds", type=float, help="how long to offer them")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 45.0)
    main(args.rate, seconds, "quick" if args.quick else "full")
