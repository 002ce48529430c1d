"""Campaigns journeys: how fast due waits are processed with N customers waiting in a
journey, and what the waiting runs cost the consumer per event.

Self-contained like bench_segments (whose stack helpers it uses): its own PostgreSQL and
broker, the campaigns service in a subprocess with clock control, N customers filled in
one statement. Then:

1. baseline: a stream of stage transitions to random customers, with no journey, read as
   a backlog (the service stopped while it is produced, so it reads full batches);
2. a journey (wait a day, then a branch and an exit) and N runs waiting in it, stored as
   the service holds them; the same kind of stream again (the consumer now reads the
   enabled journey and checks every occasion against its entry);
3. the service's clock moved a day forward: every wait is due at once; timed until no run
   waits any more. Figures are wall time and CPU seconds of the service and PostgreSQL.

    python services/campaigns/bench/bench_journeys.py [--customers N] [--events E]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from bench_segments import (
    GROUP,
    PARTITIONS,
    cpu_seconds,
    customer,
    fill,
    make_admin_key,
    postgres_cpu,
    produce,
    start_service,
    wait_http,
)

import clm_campaigns
from clm_campaigns.models import SCHEMA
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.procs import free_port
from clm_devstack.tansu import TansuBroker
from clm_events.envelope import encode_structured, new_event
from clm_events.migrations import migrate, migrate_auth
from clm_events.topics import Topics, ensure_topics

DAY = 86_400
JOURNEY = {
    "name": "bench: a day's wait",
    "entry": {"on": {"kind": "transition", "to_stage": "advocate"}},
    "steps": [
        {"id": "day", "type": "wait", "seconds": DAY},
        {"id": "loyal", "type": "branch", "condition": 'stage == "loyal"', "else": "done"},
        {"id": "done", "type": "exit"},
    ],
}
STAGES = ["onboarding", "active", "at_risk", "lapsed", "won_back", "loyal"]
# Every customer waiting on the journey's first step, as the service holds such runs.
RUNS = """
INSERT INTO campaigns.journey_runs (id, journey_id, journey_version, customer_id,
    entry_key, status, step_id, due_at, step_at, cause_event, cause_time, entered_at)
SELECT 'run_' || c.customer_id, $1, 1, c.customer_id, 'advocate#1', 'waiting', 'day',
       now() + interval '1 day', now(), 'bench/' || c.customer_id, now(), now()
FROM campaigns.customers c
"""


def transitions(
    n: int, customers: int, run: str, topics: Topics, seed: int, half: int
) -> list[Any]:
    """Transitions to random customers of one half of the base (`half` 0: even ids, 1:
    odd): the two measured streams meet customers in the same state, never each other's."""
    rng, out = random.Random(seed), []
    for k in range(n):
        subject = customer(2 * rng.randrange(customers // 2) + half)
        to_stage = rng.choice(STAGES)
        now = datetime.now(UTC)
        event = new_event(
            "lifecycle.stage_changed",
            id=f"{run}-{k}",
            source="clm/stage-engine",
            subject=subject,
            time=now,
            data={"from_stage": "active", "to_stage": to_stage, "at": now, "cause": "bench",
                  "facts": {}, "transition_id": f"{run}-{k}", "entry": 1},
        )  # fmt: skip
        out.append((topics.transitions, subject.encode(), encode_structured(event)))
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, pg: EmbeddedPostgres, bootstrap: str) -> None:
        self.args, self.pg, self.bootstrap = args, pg, bootstrap
        self.topics = Topics("clm.", PARTITIONS)
        self.results: dict[str, Any] = {}
        self.service: Any = None

    async def processed(self, conn: asyncpg.Connection) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM campaigns.processed_events WHERE consumer_group = $1",
                GROUP,
            )
        )

    async def backlog(self, conn: asyncpg.Connection, messages: list[Any]) -> dict[str, float]:
        """Produced while the service is stopped, then read in full batches: the
        service's and PostgreSQL's CPU per event."""
        before = await self.processed(conn)
        cpu, pg_cpu = cpu_seconds(self.service.pid), postgres_cpu(self.pg.data_dir)
        self.service.send_signal(signal.SIGSTOP)
        try:
            await produce(self.bootstrap, messages, None)
        finally:
            self.service.send_signal(signal.SIGCONT)
        started = time.perf_counter()
        while True:
            if await self.processed(conn) >= before + len(messages):
                break
            await asyncio.sleep(0.1)
        return {
            "wall_s": time.perf_counter() - started,
            "cpu_us": 1e6 * (cpu_seconds(self.service.pid) - cpu) / len(messages),
            "pg_cpu_us": 1e6 * (postgres_cpu(self.pg.data_dir) - pg_cpu) / len(messages),
        }

    async def run(self, db_url: str, port: int) -> None:
        args = self.args
        await wait_http(f"http://127.0.0.1:{port}/readyz")
        headers = {"Authorization": f"Bearer {await make_admin_key(db_url)}"}
        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
        n, c = args.events, args.customers
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            # As long as a measured stream: the baseline, read first, must not pay for a
            # cold cache that the second stream then finds warm.
            await self.backlog(conn, transitions(n, c, "warm0", self.topics, 1, 0))
            print("stream, no journey ...")
            self.results["baseline"] = await self.backlog(
                conn, transitions(n, c, "base", self.topics, 2, 0)
            )
            r = await http.post("/v1/journeys", json=JOURNEY, headers=headers)
            r.raise_for_status()
            journey = r.json()["id"]
            print(f"{c:,} runs waiting ...")
            started = time.perf_counter()
            await conn.execute(RUNS, journey)
            await conn.execute("ANALYZE campaigns.journey_runs")
            self.results["runs_s"] = time.perf_counter() - started
            await self.backlog(conn, transitions(n, c, "warm1", self.topics, 3, 1))
            print("the same stream with the journey ...")
            self.results["journeys"] = await self.backlog(
                conn, transitions(n, c, "jrn", self.topics, 2, 1)
            )
            print("a day later: every wait due ...")
            cpu, pg_cpu = cpu_seconds(self.service.pid), postgres_cpu(self.pg.data_dir)
            started = time.perf_counter()
            r = await http.post("/v1/clock", json={"advance_seconds": DAY + 60}, headers=headers)
            r.raise_for_status()
            waiting = c
            while waiting:
                await asyncio.sleep(1)
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM campaigns.journey_runs WHERE status = 'waiting'"
                )
                print(f"  {waiting:,} waiting", flush=True)
            wall = time.perf_counter() - started
            self.results["waits"] = {
                "wall_s": wall,
                "cpu_s": cpu_seconds(self.service.pid) - cpu,
                "pg_cpu_s": postgres_cpu(self.pg.data_dir) - pg_cpu,
                "completed": await conn.fetchval(
                    "SELECT count(*) FROM campaigns.journey_runs WHERE status = 'completed'"
                ),
                "steps": await conn.fetchval("SELECT count(*) FROM campaigns.journey_steps"),
            }
        await conn.close()


def report(args: argparse.Namespace, r: dict[str, Any], filled: float) -> None:
    base, jrn, waits, n = r["baseline"], r["journeys"], r["waits"], args.customers
    rows = [
        ("what", "figure"),
        (f"{args.events:,} transitions as a backlog, no journey: service CPU per event",
         f"{base['cpu_us']:.0f} µs (PostgreSQL {base['pg_cpu_us']:.0f} µs)"),
        (f"  the same with {n:,} customers waiting in a journey",
         f"{jrn['cpu_us']:.0f} µs (PostgreSQL {jrn['pg_cpu_us']:.0f} µs)"),
        ("    ratio to baseline (service CPU)", f"{jrn['cpu_us'] / base['cpu_us']:.2f}x"),
        (f"{n:,} waits due at once: processed in", f"{waits['wall_s']:.1f} s"),
        ("  waits processed per second", f"{n / waits['wall_s']:,.0f}"),
        ("  per service CPU-second / per service + PostgreSQL CPU-second",
         f"{n / waits['cpu_s']:,.0f} / {n / (waits['cpu_s'] + waits['pg_cpu_s']):,.0f}"),
        ("  runs completed, steps logged", f"{waits['completed']:,}, {waits['steps']:,}"),
    ]  # fmt: skip
    print(
        f"\njourneys benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {n:,} customers "
        f"(filled in {filled:.0f} s, runs stored in {r['runs_s']:.0f} s); {os.cpu_count()} "
        f"CPUs, Python {platform.python_version()}, 1-minute load {os.getloadavg()[0]:.1f}"
    )
    width = max(len(a) for a, _ in rows) + 2
    for a, b in rows:
        print(a.ljust(width) + b)


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="clm-bench-journeys-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        broker = TansuBroker(log_path=Path(tmp) / "tansu.log")
        pg.start()
        broker.start()
        try:
            url = pg.url()
            migrate_auth(url)
            migrate(Path(clm_campaigns.__file__).parent / "migrations", url=url, schema=SCHEMA)
            asyncio.run(ensure_topics(broker.bootstrap_servers, Topics("clm.", PARTITIONS).all()))
            print(f"filling {args.customers:,} customers ...")
            filled = asyncio.run(fill(pg.dsn, args.customers))
            bench = Bench(args, pg, broker.bootstrap_servers)
            port = free_port()
            bench.service = start_service(
                url, broker.bootstrap_servers, port, {"CLM_CAMPAIGNS_CLOCK_CONTROL": "true"}
            )
            try:
                asyncio.run(bench.run(url, port))
            finally:
                bench.service.terminate()
                bench.service.wait(timeout=30)
        finally:
            broker.stop()
            pg.stop()
    report(args, bench.results, filled)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    main(parser.parse_args())
