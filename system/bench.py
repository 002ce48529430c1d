"""`make bench`: the whole stack under a sustained, realistic load.

Draws a population (BG/NBD purchases with CDNOW-like parameters, plus billing, support and
web events), sends it live (event time = send time) through ingest — the Segment API, the
CloudEvents API and the inbound topic — at a fixed rate, with one webhook trigger per
stage so every transition becomes a webhook at a local receiver. Prints, next to ceilings
measured in the same run (raw producer, raw consumer, bulk upsert): throughput per
service, event-accepted -> webhook-received latency p50/p95/p99, CPU and peak RSS per
service; writes the same to docs/benchmarks.md.

    python system/bench.py            # 2k events/s for 5 minutes
    python system/bench.py --quick    # 300 events/s for 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Sender, System, create_trigger, metrics, service_env, settle
from population import Draw, draw_population
from receivers import WebhookReceiver

from clm_events.topics import ensure_topics

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prospect", "onboarding", "active", "loyal", "advocate", "at_risk", "lapsed", "won_back")
GOALS = {"p50_ms": 150, "p99_ms": 1000, "rss_mb": 250}


# -- ceilings --------------------------------------------------------------------------


async def raw_producer(bootstrap: str, topic: str, n: int) -> float:
    value = b"x" * 700
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        began = time.perf_counter()
        futures = [await producer.send(topic, value, key=str(i % 1000).encode()) for i in range(n)]
        await asyncio.gather(*futures)
        return n / (time.perf_counter() - began)
    finally:
        await producer.stop()


async def raw_consumer(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        began = time.perf_counter()
        while got < n and time.perf_counter() - began < 60:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            got += sum(len(v) for v in batch.values())
        return got / (time.perf_counter() - began)
    finally:
        await consumer.stop()


async def bulk_upsert(dsn: str, n: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TEMP TABLE bench_upsert (id text PRIMARY KEY, n int, doc jsonb)")
        rows = [(f"c{i % (n // 2)}", i, json.dumps({"i": i})) for i in range(n)]
        began = time.perf_counter()
        for i in range(0, n, 1000):
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO bench_upsert VALUES ($1, $2, $3::jsonb) "
                    "ON CONFLICT (id) DO UPDATE SET n = excluded.n, doc = excluded.doc",
                    rows[i : i + 1000],
                )
        return n / (time.perf_counter() - began)
    finally:
        await conn.close()


# -- load ------------------------------------------------------------------------------


def live_population(rate: float, seconds: float, seed: int) -> list[dict[str, Any]]:
    """Enough events for the run, in the order the generative process produces them;
    their times are replaced by the send time."""
    needed = int(rate * seconds)
    customers = max(50, needed // 8)
    end = datetime(2030, 1, 1, tzinfo=UTC)
    events = draw_population(Draw(customers=customers, end=end, weeks=78, seed=seed))
    while len(events) < needed:
        customers = int(customers * needed / len(events)) + 10
        events = draw_population(Draw(customers=customers, end=end, weeks=78, seed=seed))
    return events[:needed]


class Sampler:
    """CPU seconds and peak RSS of each service process, sampled twice a second."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.peak_rss: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._cpu0: dict[str, float] = {}

    def sample(self) -> None:
        for name, pid in self.system.pids().items():
            proc = self._procs.get(name)
            if proc is None or proc.pid != pid:
                proc = self._procs[name] = psutil.Process(pid)
            try:
                rss = proc.memory_info().rss
                t = proc.cpu_times()
            except psutil.Error:
                continue
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
            used = t.user + t.system
            self._cpu0.setdefault(name, used)
            self.cpu[name] = used - self._cpu0[name]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _us(iso: str) -> int:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1_000_000)


async def run(args: argparse.Namespace, system: System) -> dict[str, Any]:
    hook = WebhookReceiver()
    await hook.start()
    try:
        keys = await system.make_keys()
        assert system.stack.postgres is not None
        scratch = f"bench.raw.{uuid.uuid4().hex[:6]}"
        await ensure_topics(system.bootstrap, {scratch: 6})
        n_raw = 20_000 if args.quick else 100_000
        ceilings = {
            "raw producer (aiokafka, send + gather)": await raw_producer(
                system.bootstrap, scratch, n_raw
            ),
            "raw consumer (aiokafka, getmany)": await raw_consumer(
                system.bootstrap, scratch, n_raw
            ),
            "bulk upsert (asyncpg executemany, 1000 rows/txn)": await bulk_upsert(
                system.stack.postgres.dsn, 50_000 if args.quick else 200_000
            ),
        }
        payload = (
            '{"customer": {{ customer.id | tojson }}, "to": {{ event.data.to_stage | tojson }}, '
            '"at": {{ event.data.at | tojson }}}'
        )
        for stage in STAGES:
            await create_trigger(
                system,
                {
                    "name": f"to {stage}",
                    "on": {"kind": "transition", "to_stage": stage},
                    "action": {"channel": "webhook", "url": hook.url, "payload": payload},
                },
            )
        events = live_population(args.rate, args.seconds, args.seed)
        sampler = Sampler(system)
        stamped: dict[tuple[str, int], str] = {}  # (customer, event time us) -> event id
        async with Sender(system.url("ingest"), system.bootstrap, keys) as sender:
            import httpx

            async with httpx.AsyncClient() as client:
                before = await metrics(client, system)
            began = time.monotonic()
            chunk = max(10, int(args.rate / 10))
            inflight: set[asyncio.Task[None]] = set()
            for i in range(0, len(events), chunk):
                part = events[i : i + chunk]
                now = datetime.now(UTC)
                for j, e in enumerate(part):
                    at = now + timedelta(microseconds=j)
                    e["time"] = at.isoformat().replace("+00:00", "Z")
                    stamped[(e["subject"], int(at.timestamp() * 1_000_000))] = e["id"]
                task = asyncio.create_task(sender.send_chunk(part))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                if len(inflight) > 8:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                sampler.sample()
                delay = began + (i + chunk) / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if inflight:
                await asyncio.wait(inflight)
            sent_seconds = time.monotonic() - began
            drain_began = time.monotonic()
            # A machine that cannot keep up drains a backlog after sending: allow for it.
            drain_limit = max(900.0, 6 * args.seconds)
            waiter = asyncio.create_task(settle(system, quiet=3.0, timeout=drain_limit))
            while not waiter.done():
                sampler.sample()
                await asyncio.sleep(0.5)
            await waiter
            total_seconds = time.monotonic() - began - 3.0
            async with httpx.AsyncClient() as client:
                after = await metrics(client, system)
        latencies = []
        unmatched = 0
        for d in hook.deliveries:
            body = d.json()
            event_id = stamped.get((body["customer"], _us(body["at"])))
            if event_id is None or event_id not in sender.accepted:
                unmatched += 1  # a transition by time, not caused by a sent event
                continue
            latencies.append((d.received - sender.accepted[event_id]) * 1000)

        def delta(svc: str, name: str) -> float:
            return after[svc].get(name, 0.0) - before[svc].get(name, 0.0)

        throughput = {
            "ingest": delta("ingest", "clm_ingest_events_accepted_total")
            + delta("ingest", "clm_consumer_messages_total"),
            "stage-engine": delta("stage-engine", "clm_consumer_messages_total"),
            "scoring": delta("scoring", "clm_consumer_messages_total"),
            "campaigns": delta("campaigns", "clm_consumer_messages_total"),
        }
        return {
            "events": len(events),
            "rate": args.rate,
            "sent_seconds": sent_seconds,
            "drain_seconds": time.monotonic() - drain_began,
            "total_seconds": total_seconds,
            "ceilings": ceilings,
            "throughput": {k: v / total_seconds for k, v in throughput.items()},
            "messages": throughput,
            "webhooks": len(hook.deliveries),
            "matched": len(latencies),
            "unmatched": unmatched,
            "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
            "cpu": {k: v / total_seconds for k, v in sampler.cpu.items()},
            "rss_mb": {k: v / 2**20 for k, v in sampler.peak_rss.items()},
            "retries": sender.retries,
        }
    finally:
        await hook.stop()


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.system()} {platform.release()}, {model}, {psutil.cpu_count()} logical CPUs, "
        f"{mem:.1f} GiB RAM, Python {platform.python_version()}; "
        f"1-minute load average at the end: {load:.1f}"
    )


def report(r: dict[str, Any], quick: bool) -> str:
    lines = [
        f"Whole-stack benchmark ({'quick' if quick else 'full'} run, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}",
        "",
        f"Load: {r['events']} events at {r['rate']:.0f}/s (sent in {r['sent_seconds']:.1f} s, "
        f"drained {r['drain_seconds']:.1f} s after), sender retries {r['retries']}",
        "",
        "| ceiling (same run) | rate |",
        "|---|---|",
        *(f"| {k} | {v:,.0f} /s |" for k, v in r["ceilings"].items()),
        "",
        "| service | messages/s | messages | CPU (cores) | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for svc in ("ingest", "stage-engine", "scoring", "campaigns"):
        lines.append(
            f"| {svc} | {r['throughput'][svc]:,.0f} | {r['messages'][svc]:,.0f} | "
            f"{r['cpu'].get(svc, 0):.2f} | {r['rss_mb'].get(svc, 0):.0f} |"
        )
    lines += [
        "",
        "| event accepted -> webhook received | ms | goal |",
        "|---|---|---|",
        f"| p50 | {r['p50']:.0f} | <= {GOALS['p50_ms']} |",
        f"| p95 | {r['p95']:.0f} | |",
        f"| p99 | {r['p99']:.0f} | <= {GOALS['p99_ms']} |",
        "",
        f"Webhooks received: {r['webhooks']} ({r['matched']} matched to the event that caused "
        f"them, {r['unmatched']} caused by time).",
    ]
    missed = []
    if not r["p50"] <= GOALS["p50_ms"]:
        missed.append(f"p50 {r['p50']:.0f} ms > {GOALS['p50_ms']} ms")
    if not r["p99"] <= GOALS["p99_ms"]:
        missed.append(f"p99 {r['p99']:.0f} ms > {GOALS['p99_ms']} ms")
    for svc, mb in r["rss_mb"].items():
        if mb > GOALS["rss_mb"]:
            missed.append(f"{svc} RSS {mb:.0f} MB > {GOALS['rss_mb']} MB")
    if r["sent_seconds"] > 1.1 * r["events"] / r["rate"]:
        missed.append(f"could not sustain {r['rate']:.0f} events/s")
    lines += ["", "Goals missed: " + ("; ".join(missed) if missed else "none")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.rate = args.rate or (300.0 if args.quick else 2000.0)
    args.seconds = args.seconds or (20.0 if args.quick else 300.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "httpx", "aiokafka", "clm_devstack"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="clm-bench-") as tmp:
        # Started outside the event loop (the stack's setup runs its own), in the main
        # thread (the services die with the thread that started them).
        system = System(Path(tmp), extra_env=service_env(fast_recovery=False))
        try:
            system.start()
            result = asyncio.run(run(args, system))
        finally:
            system.stop()
    text = report(result, args.quick)
    print("\n" + text)
    write_section(args.out, text)
    return 0


START, END = "<!-- make bench: start -->\n", "<!-- make bench: end -->\n"


def write_section(page: Path, text: str) -> None:
    """Replace the generated part of the page, keeping what was written around it."""
    old = page.read_text() if page.exists() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = (
            "# Benchmarks\n\n`make bench` (`python system/bench.py`) writes this section.\n\n",
            "",
        )
    page.write_text(head + START + text + END + tail)


if __name__ == "__main__":
    sys.exit(main())
