"""Stage-engine throughput: events/s of one instance next to the raw consume rate and a
bulk-upsert rate measured in the same run, and the timer sweep over many due customers.

Self-contained: starts its own PostgreSQL and broker, migrates, produces the workload,
then measures (all in this process, one instance):
  raw consume   aiokafka getmany over the same topics (no database)
  bulk upsert   INSERT .. ON CONFLICT of timeline-sized rows, 500 per transaction
  runner only   the consumer runner with a handler that does nothing: the ceiling
  stage engine  the consumer runner with the stage-engine handler (dedupe, timelines,
                rules, history, outbox; one transaction per 500-message batch)
  with scores   the same, on an equal workload, once a score model is served: the
                default rules then read the churn probability and the CLV, evaluated
                as of each event under the model (BG/NBD and Gamma-Gamma closed forms)
  daily sweep   customers with a stage and history whose due times a live timer left
                (it looks ahead, so only customers time could move are due), swept just
                after midnight with the service's timer settings
  all due       the same customers all due at once (after a backfill or a restore):
                every one is evaluated
  long history  CPU per in-order event for a customer with 5, 1,000 and 10,000 stored
                inputs (domain code and row encoding; no database)
Ratios are against the raw consume rate of the same run. Event rates are also given per
CPU second of this process (steadier on a shared machine); the group join before the
first batch is not timed. The full run sweeps 1M customers; --quick sweeps 20k and
prints the 1M figure as an extrapolation.

    python services/stage-engine/bench/bench_stage_engine.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.dialects.postgresql import insert

import clm_stage_engine
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.tansu import TansuBroker
from clm_events import db
from clm_events.consumer import ConsumerRunner
from clm_events.migrations import migrate, migrate_auth
from clm_events.privacy import Tombstones
from clm_events.producer import Producer
from clm_events.scoremodel import ServedModel
from clm_events.topics import Topics, ensure_topics
from clm_stage_engine import models
from clm_stage_engine import repository as repo
from clm_stage_engine.domain.inputs import PURCHASE, Input, from_us, to_us
from clm_stage_engine.domain.model import DEFAULT_MODEL, compile_model
from clm_stage_engine.domain.timeline import Timeline, advance
from clm_stage_engine.handlers import StageEngine, load_timeline
from clm_stage_engine.timers import TimerLoop

BATCH = 500
PARTITIONS = 6


# A weekly BG/NBD and Gamma-Gamma model of a plausible retail base, as scoring serves it.
SERVED = ServedModel(
    version=1,
    model="bgnbd",
    time_unit="week",
    purchase_params={"r": 0.8, "alpha": 6.0, "a": 0.9, "b": 3.0},
    spend_params={"p": 6.0, "q": 4.0, "gamma": 15.0},
    typical_gap=12.0,
    horizon_months=12,
    monthly_discount_rate=0.01,
    clv_top_decile=400.0,
)


def workload(n: int, customers: int, run: str, prefix: str = "cust-") -> list[dict[str, Any]]:
    """Purchases (60%) and page views (40%), in event-time order per customer."""
    rng = random.Random(1)
    start = datetime.now(UTC) - timedelta(days=1)
    out = []
    for i in range(n):
        c = f"{prefix}{i % customers}"
        t = (start + timedelta(seconds=i * 86_000 / n)).isoformat()
        if rng.random() < 0.6:
            data = {"order_id": f"{run}-{i}", "amount": "59.90", "currency": "EUR"}
            kind = "purchase.completed"
        else:
            data, kind = {"url": f"https://shop.example/p/{i % 500}"}, "web.page_viewed"
        out.append(
            {
                "specversion": "1.0",
                "id": f"{run}-{i}",
                "source": "shop/web",
                "type": kind,
                "subject": c,
                "time": t,
                "data": data,
            }
        )
    return out


async def produce(bootstrap: str, topics: Topics, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(events), 5000):
            futures = [
                await producer.send(
                    topics.domain(e["type"]), json.dumps(e).encode(), key=e["subject"].encode()
                )
                for e in events[start : start + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, topics: Topics, n: int) -> float:
    consumer = AIOKafkaConsumer(
        *topics.domains,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen = 0
        while not seen:  # the group join: not timed, as for the stage engine
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            seen = sum(len(v) for v in batch.values())
        first, began = seen, time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            seen += sum(len(v) for v in batch.values())
        return (seen - first) / (time.perf_counter() - began)
    finally:
        await consumer.stop()


async def bulk_upsert(url: str, n: int) -> float:
    engine = db.create_engine(url)
    md = sa.MetaData(schema="bench")
    table = sa.Table(
        "upsert",
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text),
        sa.Column("blob", sa.LargeBinary),
    )
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS bench"))
        await conn.run_sync(md.create_all)
    blob = b"x" * 400
    began = time.perf_counter()
    for start in range(0, n, BATCH):
        stmt = insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={"stage": stmt.excluded.stage, "blob": stmt.excluded.blob},
        )
        async with engine.begin() as conn:
            await conn.execute(
                stmt,
                [
                    {"id": f"c-{i % (n // 5)}", "stage": "active", "blob": blob}
                    for i in range(start, min(n, start + BATCH))
                ],
            )
    rate = n / (time.perf_counter() - began)
    await engine.dispose()
    return rate


# The privacy plumbing the service runs with: the guard and the tombstone lookup.
BENCH_TOMBSTONES = Tombstones(models.privacy_tombstones, b"bench", timedelta(days=1))


async def no_op(session: Any, deliveries: Any) -> None:
    """A handler that does nothing: the rate of the shared consumer runner alone (decode,
    dedupe, transaction, offset commit), the ceiling any handler runs under."""


async def stage_engine_rate(
    url: str, bootstrap: str, topics: Topics, n: int, *, runner_only: bool = False
) -> tuple[float, float, int]:
    """Events/s, events per CPU second of this process (steadier than wall time on a
    shared machine), transitions in the database."""
    engine = db.create_engine(url)
    sessions = db.session_factory(engine)
    producer = Producer(bootstrap)
    await producer.start()
    stage = StageEngine(topics)
    runner = ConsumerRunner(
        group_id=f"stage-{uuid.uuid4().hex[:6]}",
        topics=topics.domains,
        bootstrap_servers=bootstrap,
        sessions=sessions,
        processed_table=models.processed_events,
        handler=no_op if runner_only else stage.handle,
        producer=producer,
        deadletter_topic=topics.deadletter,
        max_records=BATCH,
        tombstones=BENCH_TOMBSTONES,  # events of erased customers are looked up, as live
    )
    await runner.start()
    try:
        async with sessions() as s, s.begin():
            await stage.models.current(s)  # compile the model outside the timing
        seen = 0
        while not seen:  # the first batch waits for the group join: not timed
            seen = await runner.poll_once()
        first, began, cpu = seen, time.perf_counter(), time.process_time()
        while seen < n:
            seen += await runner.poll_once()
        rate = (seen - first) / (time.perf_counter() - began)
        cpu_rate = (seen - first) / (time.process_time() - cpu)
        async with sessions() as s:
            transitions = int(
                await s.scalar(sa.select(sa.func.count()).select_from(models.transitions)) or 0
            )
        return rate, cpu_rate, transitions
    finally:
        await runner.stop()
        await producer.stop()
        await engine.dispose()


async def serve_scores(url: str) -> None:
    """A lifecycle model version carrying SERVED, as adopting scoring's event makes."""
    engine = db.create_engine(url)
    try:
        async with db.session_factory(engine)() as s, s.begin():
            await StageEngine(Topics("x.")).models.current(s)  # version 1, if none yet
            await repo.add_model(s, "bench", score_model=SERVED.to_json())
    finally:
        await engine.dispose()


def _templates(now: datetime, steady: bool) -> list[tuple[Any, ...]]:
    """200 customers with three purchases a week apart, the last 0-200 days before
    yesterday, as stored rows (stage, since, evaluated_until, due_at, timeline).

    steady: the timer has run live (woken at each due time, looking ahead as the service
    does), so due times are where a day in production finds them. Otherwise every
    customer is evaluated up to yesterday and due at the next tick, as after a backfill
    or a restore: all of them are due now."""
    model = compile_model(DEFAULT_MODEL, 1)
    until = to_us(now - timedelta(days=1))
    look_ahead = StageEngine(Topics("x.")).look_ahead
    out = []
    for offset in range(200):
        first = until - (14 + offset) * 86_400_000_000
        purchases = [
            Input(first + d * 86_400_000_000, "shop", f"o{d}", PURCHASE, {"amount": 20.0})
            for d in (0, 7, 14)
        ]
        tl = Timeline("template")
        if steady:
            for moment, arriving in [*((i.at, [i]) for i in purchases), (until, [])]:
                while tl.due_at is not None and tl.due_at <= moment:
                    woken = tl.due_at + 1_000_000  # the timer runs every second
                    advance(tl, model, [], woken, look_ahead=look_ahead, quiet_until=tl.due_at)
                if arriving:
                    advance(tl, model, arriving)
        else:
            advance(tl, model, purchases, until)
        assert tl.evaluated_until is not None and tl.due_at is not None
        blob = json.dumps(tl.to_json(), separators=(",", ":")).encode()
        since = from_us(tl.since) if tl.since is not None else None
        out.append((tl.stage, since, from_us(tl.evaluated_until), from_us(tl.due_at), blob))
    return out


async def seed(url: str, customers: int, now: datetime, *, steady: bool) -> str:
    """Customers built from the templates (rows loaded with COPY); returns their id
    prefix. Their input rows are left out: a sweep reads only the stored fold."""
    prefix = "steady-" if steady else "due-"
    templates = _templates(now, steady)
    engine = db.create_engine(url)
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        for start in range(0, customers, 100_000):
            rows = []
            for i in range(start, min(customers, start + 100_000)):
                stage, since, until, due, blob = templates[i % 200]
                rows.append((f"{prefix}{i}", stage, since, until, due, 1, blob))
            await driver.copy_records_to_table(
                "customers",
                schema_name=models.SCHEMA,
                records=rows,
                columns=[
                    "customer_id",
                    "stage",
                    "stage_since",
                    "evaluated_until",
                    "due_at",
                    "model_version",
                    "timeline",
                ],
            )
        await conn.commit()
        await conn.execute(sa.text(f"ANALYZE {models.customers.fullname}"))
    await engine.dispose()
    return prefix


async def sweep(
    url: str, topics: Topics, prefix: str, now: datetime
) -> tuple[float, float, int, int]:
    """Seconds to sweep every due customer, CPU seconds this process spent on it (the
    database's share shows as the difference), customers evaluated, and how many of
    them moved."""
    engine = db.create_engine(url)
    loop = TimerLoop(
        StageEngine(topics),
        db.session_factory(engine),
        tombstones=BENCH_TOMBSTONES,
        clock=lambda: now,
    )
    t = models.transitions
    began, cpu = time.perf_counter(), time.process_time()
    swept = await loop.sweep()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    async with engine.connect() as conn:
        moved = await conn.scalar(
            sa.select(sa.func.count()).where(
                t.c.customer_id.startswith(prefix), t.c.at > now - timedelta(days=1)
            )
        )
    await engine.dispose()
    return elapsed, cpu, swept, int(moved or 0)


def history_cost(sizes: tuple[int, ...] = (5, 1_000, 10_000)) -> list[tuple[int, float]]:
    """CPU ms per in-order event for a customer with `size` stored inputs (page views, a
    purchase in every 20): load the stored row, advance, encode the row to store. The
    database's share is one row read and written either way."""
    model = compile_model(DEFAULT_MODEL, 1)
    engine = StageEngine(Topics("x."))
    t0, step = to_us(datetime(2025, 1, 1, tzinfo=UTC)), 600_000_000  # one every 10 min
    out = []
    for size in sizes:
        tl = Timeline("c")
        history = [
            Input(t0 + k * step, "shop", f"e{k}", PURCHASE, {"amount": 10.0})
            if k % 20 == 0
            else Input(t0 + k * step, "shop", f"e{k}", "web.page_viewed", {})
            for k in range(size)
        ]
        advance(tl, model, history)
        stored = (
            engine._row(tl, 1, None, None, None, None).timeline,
            from_us(tl.evaluated_until or 0),
        )
        reps = 200
        cpu = time.process_time()
        for r in range(reps):
            tl = load_timeline("c", stored)
            assert not tl.needs_inputs([])  # in order: the stored inputs are not read
            arriving = Input(t0 + (size + r) * step, "shop", f"n{r}", "web.page_viewed", {})
            advance(tl, model, [arriving])
            engine._row(tl, 1, None, None, None, None)
        out.append((size, (time.process_time() - cpu) / reps * 1000))
    return out


async def main(quick: bool) -> None:
    n = 20_000 if quick else 200_000
    due = 20_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        broker = TansuBroker()
        pg.start()
        broker.start()
        try:
            url, bootstrap = pg.url(), broker.bootstrap_servers
            await asyncio.to_thread(migrate_auth, url)
            scripts = Path(clm_stage_engine.__file__).parent / "migrations"
            await asyncio.to_thread(migrate, scripts, url=url, schema=models.SCHEMA)
            topics = Topics(f"bench{uuid.uuid4().hex[:6]}.", PARTITIONS)
            await ensure_topics(bootstrap, topics.all())
            events = workload(n, n // 5, uuid.uuid4().hex[:6])
            print(f"producing {n:,} events for {n // 5:,} customers ...", flush=True)
            await produce(bootstrap, topics, events)
            raw = await raw_consume(bootstrap, topics, n)
            upsert = await bulk_upsert(url, n)
            runner, runner_cpu, _ = await stage_engine_rate(
                url, bootstrap, topics, n, runner_only=True
            )
            rate, rate_cpu, transitions = await stage_engine_rate(url, bootstrap, topics, n)
            # Just after midnight: the daily tick has come for everyone.
            now = datetime.now(UTC).replace(hour=0, minute=0, second=1, microsecond=0)
            print(f"seeding {due:,} customers as a live timer leaves them ...", flush=True)
            prefix = await seed(url, due, now, steady=True)
            daily = await sweep(url, topics, prefix, now)
            print(f"seeding {due:,} customers all due now ...", flush=True)
            prefix = await seed(url, due, now, steady=False)
            every = await sweep(url, topics, prefix, now)
            assert every[2] >= due, every
            long = history_cost()
            # The same workload for other customers, once a score model is served (last:
            # the sweeps above run under the model without scores).
            scored_topics = Topics(f"benchs{uuid.uuid4().hex[:6]}.", PARTITIONS)
            await ensure_topics(bootstrap, scored_topics.all())
            await produce(
                bootstrap,
                scored_topics,
                workload(n, n // 5, uuid.uuid4().hex[:6], prefix="scored-"),
            )
            await serve_scores(url)
            scored, scored_cpu, scored_transitions = await stage_engine_rate(
                url, bootstrap, scored_topics, n
            )
        finally:
            broker.stop()
            pg.stop()

    scale = 1_000_000 / due
    note = " (extrapolated)" if due < 1_000_000 else ""
    print()
    print(f"{'measure':<34}{'value':>16}{'vs raw consume':>16}")
    print(f"{'raw consume (getmany)':<34}{raw:>12,.0f} ev/s{1.0:>15.2f}x")
    print(f"{'bulk upsert (500/txn)':<34}{upsert:>11,.0f} rows/s{upsert / raw:>15.2f}x")
    print(f"{'consumer runner, no-op handler':<34}{runner:>12,.0f} ev/s{runner / raw:>15.2f}x")
    print(f"{'  per CPU second of this process':<34}{runner_cpu:>12,.0f} ev/s")
    print(f"{'stage engine, one instance':<34}{rate:>12,.0f} ev/s{rate / raw:>15.2f}x")
    print(f"{'  per CPU second of this process':<34}{rate_cpu:>12,.0f} ev/s")
    print(f"{'  vs the runner alone':<34}{rate / runner:>15.2f}x")
    print(f"{'  transitions written':<34}{transitions:>16,}")
    print(f"{'stage engine, score-reading rules':<34}{scored:>12,.0f} ev/s{scored / raw:>15.2f}x")
    print(f"{'  per CPU second of this process':<34}{scored_cpu:>12,.0f} ev/s")
    print(f"{'  CPU per event vs without scores':<34}{rate_cpu / scored_cpu:>15.2f}x")
    print(f"{'  transitions written':<34}{scored_transitions - transitions:>16,}")
    for label, (secs, cpu, swept, moved) in (
        (f"daily sweep, {due:,} customers", daily),
        (f"all {due:,} due at once", every),
    ):
        print(f"{label:<34}{secs:>14.1f} s  (goal <= 60 s per 1M)")
        print(f"{'  customers evaluated':<34}{swept:>16,}")
        print(f"{'  customers who moved stage':<34}{moved:>16,}")
        print(f"{'  CPU of this process':<34}{cpu:>14.1f} s")
        print(f"{'  per 1M customers' + note:<34}{secs * scale:>14.1f} s")
    print(f"{'stage engine vs goal 20k ev/s':<34}{rate / 20_000:>15.2f}x")
    base = long[0][1]
    for size, ms in long:
        label = f"per event, {size:,} stored inputs"
        print(f"{label:<34}{ms:>11.3f} ms CPU{ms / base:>11.1f}x the {long[0][0]}-input cost")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small run (20k events, 20k due customers)"
    )
    asyncio.run(main(parser.parse_args().quick))
