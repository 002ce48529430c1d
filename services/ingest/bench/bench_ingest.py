"""Ingest throughput: events/s through HTTP 500-event batches, next to the raw producer.

Self-contained: starts its own PostgreSQL and broker, migrates, creates a source key,
measures the raw aiokafka producer (send + gather, linger 5 ms, acks=all, lz4) as the
baseline, then runs ingest under uvicorn in a subprocess while a separate load process
posts CloudEvents batches, then Segment batches (78% "Order Completed", 20% custom event
names, 2% invalid messages, which are dead-lettered). Prints a table; the ratio column is
against the baseline of the same run.

    python services/ingest/bench/bench_ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import clm_ingest
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.procs import free_port
from clm_devstack.tansu import TansuBroker
from clm_events import auth
from clm_events.envelope import encode_structured, parse_event
from clm_events.migrations import migrate, migrate_auth
from clm_events.topics import Topics, ensure_topics
from clm_ingest.models import SCHEMA

BATCH = 500
PARTITIONS = 6


def event(i: int, run: str) -> dict[str, Any]:
    """A realistic purchase (~400 bytes) with two items."""
    return {
        "specversion": "1.0",
        "id": f"{run}-ord-{i}",
        "source": "shop/checkout",
        "type": "purchase.completed",
        "subject": f"cust-{i % 50_000}",
        "time": datetime.now(UTC).isoformat(),
        "data": {
            "order_id": f"{run}-{i}",
            "amount": "59.90",
            "currency": "EUR",
            "items": [
                {"sku": "SKU-1", "category": "books", "quantity": 1, "unit_price": "19.90"},
                {"sku": "SKU-2", "category": "games", "quantity": 2, "unit_price": "20.00"},
            ],
        },
    }


def segment_message(i: int, run: str) -> dict[str, Any]:
    """What a Segment library sends: 1 in 50 invalid (an order without currency), 10 in
    50 a custom event name (web.tracked), the rest orders like `event`."""
    base = {
        "type": "track",
        "messageId": f"{run}-seg-{i}",
        "userId": f"cust-{i % 50_000}",
        "timestamp": datetime.now(UTC).isoformat(),
        "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
        "integrations": {},
    }
    kind = i % 50
    if kind < 10:
        props = {"sku": f"SKU-{i % 100}", "category": "books", "price": 19.9}
        return {**base, "event": "Product Viewed", "properties": props}
    order = {
        "order_id": f"{run}-{i}",
        "revenue": 59.9,
        "currency": "EUR",
        "products": [
            {"sku": "SKU-1", "category": "books", "quantity": 1, "price": 19.9},
            {"sku": "SKU-2", "category": "games", "quantity": 2, "price": 20},
        ],
    }
    if kind == 10:
        del order["currency"]
    return {**base, "event": "Order Completed", "properties": order}


# --- the load process ------------------------------------------------------------------


def _request(mode: str, r: int, run: str) -> bytes:
    if mode == "segment":
        batch = [segment_message(r * BATCH + i, run) for i in range(BATCH)]
        return json.dumps({"batch": batch, "sentAt": datetime.now(UTC).isoformat()}).encode()
    return json.dumps([event(r * BATCH + i, run) for i in range(BATCH)]).encode()


async def load(url: str, key: str, requests: int, concurrency: int, mode: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    bodies = [_request(mode, r, run) for r in range(requests)]
    warm_up = _request(mode, 0, f"{run}-warm")  # its own ids: the run itself has no duplicate
    path = "/v1/batch" if mode == "segment" else "/v1/events"
    if mode == "segment":
        headers = {"Authorization": f"Basic {base64.b64encode(f'{key}:'.encode()).decode()}"}
        headers["Content-Type"] = "application/json"
    else:
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/cloudevents-batch+json",
        }
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            began = time.perf_counter()
            response = await client.post(f"{url}{path}", content=body, headers=headers)
            latencies.append(time.perf_counter() - began)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        # Warm-up: connections, key cache, producer metadata.
        await client.post(f"{url}{path}", content=warm_up, headers=headers)
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "events": requests * BATCH,
        "seconds": elapsed,
        "statuses": statuses,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


# --- the orchestrating process ---------------------------------------------------------


async def raw_producer_rate(bootstrap: str, total: int) -> float:
    topics = Topics("raw.", PARTITIONS)
    await ensure_topics(bootstrap, {topics.domain("purchase.completed"): PARTITIONS})
    run = uuid.uuid4().hex[:8]
    # The same bytes ingest publishes: validated and re-encoded CloudEvents.
    values = [encode_structured(parse_event(event(i, run))) for i in range(total)]
    keys = [f"cust-{i % 50_000}".encode() for i in range(total)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type="lz4", linger_ms=5
    )
    await producer.start()
    try:
        topic = topics.domain("purchase.completed")
        await producer.send_and_wait(topic, values[0], key=keys[0])
        began = time.perf_counter()
        futures = [await producer.send(topic, v, key=k) for v, k in zip(values, keys, strict=True)]
        await asyncio.gather(*futures)
        return total / (time.perf_counter() - began)
    finally:
        await producer.stop()


async def count_messages(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(records) for records in batch.values())
        return seen
    finally:
        await consumer.stop()


async def create_source_key(url: str) -> str:
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            _, plaintext = await auth.create_key(
                session, role=auth.Role.source, name="bench", source="shop"
            )
        return plaintext
    finally:
        await engine.dispose()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ingest exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("ingest did not become ready")


def main(quick: bool) -> None:
    requests = 40 if quick else 400
    concurrency = 4
    total = requests * BATCH
    with tempfile.TemporaryDirectory(prefix="clm-bench-ingest-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        broker = TansuBroker(log_path=Path(tmp) / "tansu.log")
        pg.start()
        broker.start()
        ingest: subprocess.Popen[bytes] | None = None
        try:
            db_url = pg.url()
            migrate_auth(db_url)
            migrate(Path(clm_ingest.__file__).parent / "migrations", url=db_url, schema=SCHEMA)
            key = asyncio.run(create_source_key(db_url))

            raw_rate = asyncio.run(raw_producer_rate(broker.bootstrap_servers, total))

            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {
                **os.environ,
                "CLM_DATABASE_URL": db_url,
                "CLM_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "CLM_TOPIC_PREFIX": "bench.",
                "CLM_TOPIC_PARTITIONS": str(PARTITIONS),
                "CLM_LOG_LEVEL": "WARNING",
                "CLM_INGEST_RATE_LIMIT_EVENTS_PER_SECOND": "0",
            }
            ingest = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "uvicorn", "clm_ingest.main:create_app", "--factory"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                    *("--no-access-log", "--log-level", "warning"),
                ],
                env=env,
            )
            wait_ready(url, ingest)
            results = {}
            for mode in ("cloudevents", "segment"):
                loader = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        *("--load", url, key, str(requests), str(concurrency), mode),
                    ],
                    check=True,
                    capture_output=True,
                )
                results[mode] = json.loads(loader.stdout)
            # Each load also sent one warm-up request of its own events.
            sent = total + BATCH
            published = {
                topic: asyncio.run(count_messages(broker.bootstrap_servers, topic, expect))
                for topic, expect in (
                    ("bench.events.purchase", sent + sent * 39 // 50),
                    ("bench.events.web", sent * 10 // 50),
                    ("bench.events.deadletter", sent // 50),
                )
            }
        finally:
            if ingest is not None:
                ingest.terminate()
                ingest.wait(timeout=30)
            broker.stop()
            pg.stop()

    rows = [("raw producer (send+gather, linger 5 ms)", f"{raw_rate:,.0f}", "-", "-", "1.00")]
    labels = {
        "cloudevents": f"ingest HTTP CloudEvents, {BATCH}-event batches, {concurrency} in flight",
        "segment": f"ingest HTTP Segment, {BATCH}-message batches, 20% custom names, 2% invalid",
    }
    for mode, result in results.items():
        rate = result["events"] / result["seconds"]
        rows.append(
            (
                labels[mode],
                f"{rate:,.0f}",
                f"{result['p50'] * 1000:.1f}",
                f"{result['p99'] * 1000:.1f}",
                f"{rate / raw_rate:.2f}",
            )
        )
    header = ("path", "events/s", "p50 ms", "p99 ms", "x raw")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\ningest benchmark: {total:,} events per path ({'quick' if quick else 'full'} run)")
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    statuses = {mode: result["statuses"] for mode, result in results.items()}
    print(f"\nresponses: {statuses}; messages on the topics: {published}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (20k events)")
    parser.add_argument(
        "--load", nargs=5, metavar=("URL", "KEY", "REQUESTS", "CONCURRENCY", "MODE")
    )
    args = parser.parse_args()
    if args.load:
        url, key, n, c, mode = args.load
        print(json.dumps(asyncio.run(load(url, key, int(n), int(c), mode))))
    else:
        main(args.quick)
