"""Campaigns segments: what live membership costs per event, and how long an estimate and
a recompute take over the whole customer base.

Self-contained, like bench_campaigns: starts its own PostgreSQL and broker, migrates, runs
the campaigns service under uvicorn in a subprocess and fills `campaigns.customers` with N
customers in one statement (stage, traits, facts, scores with RFM). Customers come in
twins (c0000000 and c0000001 hold the same projection), so the same events can be sent
twice to equal customers spread over the whole base:

1. baseline: the event stream (stage transitions, score updates with RFM, identify calls)
   to one twin of each pair, with no segment: half offered at --rate, half as a backlog
   (the service stopped while it is produced, so it then reads full batches);
2. a draft estimated over every customer (POST /v1/segments/estimate), a few conditions;
3. one segment created (POST, timed to its first full compute) and edited (PUT, timed to
   `recompute.finished_at`);
4. the other K-1 segments stored as the service holds them, their members computed for
   the customers the stream touches (with the service's own code), then the same stream
   to the other twins with K live segments.

Figures are CPU per event of the service process (and of PostgreSQL), which a busy
machine changes less than rates; the ratio compares the two streams of the same run.
Timings are printed, never asserted.

    python services/campaigns/bench/bench_segments.py [--customers N] [--segments K]
        [--events E] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import clm_campaigns
from clm_campaigns import repository, segments
from clm_campaigns.domain.segments import CompiledSegment, compile_segment_condition
from clm_campaigns.models import SCHEMA
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.procs import free_port
from clm_devstack.tansu import TansuBroker
from clm_events import auth
from clm_events.envelope import encode_structured, new_event
from clm_events.migrations import migrate, migrate_auth
from clm_events.topics import Topics, ensure_topics

PARTITIONS = 6
GROUP = "clm-campaigns"
NOW = datetime.now(UTC).replace(microsecond=0)
MONTH_AGO = (NOW - timedelta(days=30)).isoformat().replace("+00:00", "Z")

# Fifty segments a marketing team keeps: by stage, scores, RFM, traits and facts, alone
# and combined. The first is the one created and edited through the API.
CONDITIONS = [
    'stage == "at_risk" && scores.clv > 500',
    'stage == "at_risk"',
    'stage == "lapsed"',
    'stage in ["loyal", "advocate"]',
    'stage == "onboarding" && facts.purchases_total == 0',
    'stage == "won_back"',
    'stage == "active" && facts.purchases_90d >= 2',
    'stage == "prospect" && traits.plan == "free"',
    "scores.clv > 500",
    "scores.churn_probability > 0.7",
    "scores.churn_probability > 0.5 && scores.clv > 200",
    "scores.p_alive < 0.3",
    "scores.expected_purchases >= 2.0",
    'stage == "loyal" && scores.churn_probability > 0.4',
    'scores.rfm_segment == "Champions"',
    'scores.rfm_segment == "Loyal"',
    'scores.rfm_segment == "At risk"',
    'scores.rfm_segment == "Can\'t lose"',
    'scores.rfm_segment in ["Hibernating", "Lost"]',
    'scores.rfm_segment == "New" && stage == "onboarding"',
    "scores.rfm_recency >= 4 && scores.rfm_frequency >= 4",
    "scores.rfm_monetary == 5",
    'scores.rfm_cell == "555"',
    "scores.rfm_recency <= 2 && scores.rfm_monetary >= 4",
    'scores.rfm_segment == "Need attention"',
    'scores.rfm_segment == "About to sleep" && facts.open_tickets > 0',
    'traits.plan == "enterprise"',
    'traits.plan == "pro" && traits.country == "DE"',
    'traits.country in ["FR", "ES", "IT"]',
    "traits.marketing_opt_in == true",
    'traits.locale == "de-DE" && stage == "active"',
    'traits.signup_source == "referral"',
    'traits.plan == "free" && facts.purchases_total >= 3',
    "traits.company_size > 100",
    "facts.revenue_total > 1000.0",
    "facts.purchases_total >= 10",
    "facts.days_since_last_purchase != null && facts.days_since_last_purchase > 90.0",
    'facts.subscription_status == "cancelled"',
    'facts.subscription_status == "active" && facts.open_failed_payments > 0',
    "facts.open_tickets >= 2",
    "facts.latest_nps != null && facts.latest_nps >= 9",
    "facts.latest_nps != null && facts.latest_nps <= 6",
    f'facts.last_purchase_at != null && facts.last_purchase_at > timestamp("{MONTH_AGO}")',
    '"Product Viewed" in facts.tracked_30d && facts.tracked_30d["Product Viewed"] >= 3',
    'facts.revenue_365d > 500.0 && stage == "loyal"',
    "facts.purchases_30d == 0 && facts.purchases_365d > 0",
    'facts.open_ticket_max_priority in ["high", "urgent"]',
    'stage == "at_risk" && scores.rfm_segment in ["Champions", "Loyal"] && traits.plan != "free"',
    "facts.clv != null && facts.clv > 1000.0 && traits.marketing_opt_in == true",
    '(stage == "lapsed" || stage == "at_risk") && facts.revenue_total > 200.0 '
    '&& traits.country == "US"',
]
EDITED = 'stage == "at_risk" && scores.clv > 300'
ESTIMATES = [
    ("stage and CLV", 'stage == "at_risk" && scores.clv > 500'),
    ("traits", 'traits.plan == "pro" && traits.country == "DE"'),
    ("RFM", 'scores.rfm_segment == "Champions"'),
    ("facts", "facts.days_since_last_purchase != null && facts.days_since_last_purchase > 90.0"),
]

STAGES = [
    ("prospect", 10), ("onboarding", 10), ("active", 35), ("loyal", 15),
    ("advocate", 5), ("at_risk", 12), ("lapsed", 10), ("won_back", 3),
]  # fmt: skip
PLANS, COUNTRIES = ["free", "pro", "enterprise"], ["DE", "US", "FR", "GB", "ES", "IT", "NL"]
LOCALES = {"DE": "de-DE", "US": "en-US", "FR": "fr-FR", "GB": "en-GB", "ES": "es-ES",
           "IT": "it-IT", "NL": "nl-NL"}  # fmt: skip


def _stage_case(r: str) -> str:
    """A CASE picking a stage by the weights above from a uniform value `r`."""
    total, acc, parts = sum(w for _, w in STAGES), 0, []
    for name, weight in STAGES[:-1]:
        acc += weight
        parts.append(f"WHEN {r} < {acc / total} THEN '{name}'")
    return f"CASE {' '.join(parts)} ELSE '{STAGES[-1][0]}' END"


def _rfm_case() -> str:
    """The named segment of an RFM cell, roughly as scoring names them."""
    return """CASE
        WHEN rr >= 4 AND rf >= 4 AND rm >= 4 THEN 'Champions'
        WHEN rr = 5 AND rf = 1 THEN 'New'
        WHEN rr >= 4 AND rf <= 2 THEN 'Promising'
        WHEN rr >= 3 AND rf >= 4 THEN 'Loyal'
        WHEN rr >= 3 AND rf = 3 THEN 'Potential loyalist'
        WHEN rr = 1 AND rf >= 4 THEN 'Can''t lose'
        WHEN rr <= 2 AND rf >= 3 THEN 'At risk'
        WHEN rr = 3 AND rf <= 2 AND rm >= 3 THEN 'Need attention'
        WHEN rr = 3 THEN 'About to sleep'
        WHEN rr = 2 THEN 'Hibernating'
        ELSE 'Lost' END"""


# Every twin pair (j = i / 2) draws its uniform values from hashint4 of j: both twins get
# the same projection, and the fill needs no client round trip per row.
FILL = f"""
WITH base AS (
    SELECT i, j,
        -- uniform in [0, 1), as double precision
        (hashint4(j * 16 + 1)::bigint + 2147483648) / 4294967296.0::float8 AS r1,
        (hashint4(j * 16 + 2)::bigint + 2147483648) / 4294967296.0::float8 AS r2,
        (hashint4(j * 16 + 3)::bigint + 2147483648) / 4294967296.0::float8 AS r3,
        (hashint4(j * 16 + 4)::bigint + 2147483648) / 4294967296.0::float8 AS r4,
        (hashint4(j * 16 + 5)::bigint + 2147483648) / 4294967296.0::float8 AS r5,
        (hashint4(j * 16 + 6)::bigint + 2147483648) / 4294967296.0::float8 AS r6,
        (hashint4(j * 16 + 7)::bigint + 2147483648) / 4294967296.0::float8 AS r7,
        (hashint4(j * 16 + 8)::bigint + 2147483648) / 4294967296.0::float8 AS r8
    FROM (SELECT i, i / 2 AS j FROM generate_series(0, $1 - 1) i) s
), shaped AS (
    SELECT *,
        floor(-ln(greatest(r2, 1e-9)) * 4)::int AS purchases,
        1 + floor(r3 * 4.999)::int AS rr, 1 + floor(r4 * 4.999)::int AS rf,
        1 + floor(r5 * 4.999)::int AS rm,
        round((r3 * 400)::numeric, 1) AS since_days
    FROM base
)
INSERT INTO campaigns.customers (customer_id, stage, stage_at, traits, facts, scores,
    scores_at, stage_transition, stage_entry)
SELECT 'c' || lpad(i::text, 7, '0'),
    {_stage_case("r1")},
    now() - interval '1 day' * (r6 * 365),
    jsonb_build_object(
        'email', 'c' || i || '@x.example', 'name', 'Customer ' || j,
        'plan', CASE WHEN r7 < 0.55 THEN 'free' WHEN r7 < 0.9 THEN 'pro' ELSE 'enterprise' END,
        'country', (ARRAY{COUNTRIES})[1 + floor(r5 * 7)::int],
        'locale', (ARRAY{list(LOCALES.values())})[1 + floor(r5 * 7)::int],
        'marketing_opt_in', r6 > 0.4,
        'signup_source', (ARRAY['organic', 'ads', 'referral', 'partner'])[1 + floor(r4 * 4)::int],
        'company_size', floor(r2 * r3 * 500)::int),
    jsonb_build_object(
        'purchases_total', purchases,
        'purchases_30d', CASE WHEN since_days < 30 THEN least(purchases, 2) ELSE 0 END,
        'purchases_90d', CASE WHEN since_days < 90 THEN least(purchases, 4) ELSE 0 END,
        'purchases_365d', CASE WHEN since_days < 365 THEN least(purchases, 8) ELSE 0 END,
        'revenue_total', round((purchases * (20 + r4 * 180))::numeric, 2),
        'revenue_30d', CASE WHEN since_days < 30 THEN round((r4 * 200)::numeric, 2) ELSE 0 END,
        'revenue_90d', CASE WHEN since_days < 90 THEN round((r4 * 400)::numeric, 2) ELSE 0 END,
        'revenue_365d', CASE WHEN since_days < 365
            THEN round((least(purchases, 8) * (20 + r4 * 180))::numeric, 2) ELSE 0 END,
        'refunds_total', (r7 < 0.05)::int,
        'days_since_last_purchase', CASE WHEN purchases > 0 THEN since_days END,
        'last_purchase_at', CASE WHEN purchases > 0 THEN
            to_char((now() - interval '1 day' * since_days::float8) AT TIME ZONE 'UTC',
                    'YYYY-MM-DD"T"HH24:MI:SS"Z"') END,
        'subscription_status', CASE WHEN r5 < 0.5 THEN 'none' WHEN r5 < 0.85 THEN 'active'
            ELSE 'cancelled' END,
        'open_failed_payments', (r6 < 0.04)::int,
        'open_tickets', floor(-ln(greatest(r7, 1e-9)) * 0.5)::int,
        'open_ticket_max_priority', (ARRAY['none', 'low', 'normal', 'high', 'urgent'])
            [1 + floor(r2 * 5)::int],
        'latest_nps', CASE WHEN r6 < 0.3 THEN floor(r3 * 11)::int END,
        'tracked_30d', CASE WHEN r4 < 0.6
            THEN jsonb_build_object('Product Viewed', floor(r2 * 8)::int) ELSE '{{}}' END),
    CASE WHEN r8 < 0.1 THEN '{{}}'::jsonb ELSE jsonb_build_object(
        'clv', round((purchases * (10 + r5 * 150) * (1 - r3 * 0.8))::numeric, 2)::text,
        'churn_probability', round(r3::numeric, 4),
        'p_alive', round((1 - r3)::numeric, 4),
        'expected_purchases', round((purchases * (1 - r3) * 0.6)::numeric, 3),
        'model', 'bgnbd',
        'rfm_recency', rr, 'rfm_frequency', rf, 'rfm_monetary', rm,
        'rfm_cell', rr::text || rf::text || rm::text,
        'rfm_segment', {_rfm_case()}) END,
    now() - interval '1 day' * r2,
    md5(i::text), 1
FROM shaped
"""


def customer(i: int) -> str:
    return f"c{i:07d}"


# Where a lifecycle transition goes from each stage (the default rules' graph, roughly).
NEXT_STAGE = {
    None: ["prospect", "onboarding"],
    "prospect": ["onboarding"],
    "onboarding": ["active", "at_risk"],
    "active": ["loyal", "at_risk", "at_risk"],
    "loyal": ["advocate", "at_risk"],
    "advocate": ["at_risk", "loyal"],
    "at_risk": ["lapsed", "active", "won_back"],
    "lapsed": ["won_back"],
    "won_back": ["active", "at_risk"],
}


def rfm_segment(r: int, f: int, m: int) -> str:
    """As the fill's CASE names a cell."""
    if r >= 4 and f >= 4 and m >= 4:
        return "Champions"
    if r == 5 and f == 1:
        return "New"
    if r >= 4 and f <= 2:
        return "Promising"
    if r >= 3 and f >= 4:
        return "Loyal"
    if r >= 3 and f == 3:
        return "Potential loyalist"
    if r == 1 and f >= 4:
        return "Can't lose"
    if r <= 2 and f >= 3:
        return "At risk"
    if r == 3:
        return "Need attention" if m >= 3 else "About to sleep"
    return "Hibernating" if r == 2 else "Lost"


def pick_pairs(n: int, customers: int, seed: int) -> list[int]:
    """Twin pairs spread over the whole base, about two events each."""
    return random.Random(seed).sample(range(customers // 2), min(customers // 2, max(1, n // 2)))


def stream(
    n: int, states: dict[int, dict[str, Any]], seed: int
) -> list[tuple[str, int, str, dict[str, Any]]]:
    """n events for these twin pairs, each a step from the pair's current projection
    (`states`, updated as it goes): (type, pair, source, data). About 40% transitions along
    the lifecycle with the facts the stage engine publishes (a purchase now and then),
    40% score updates that drift (RFM quintiles move by one at times) and 20% identify
    calls, mostly repeating what the customer's traits say."""
    rng = random.Random(seed)
    pairs = sorted(states)
    out = []
    for _ in range(n):
        pair, roll = rng.choice(pairs), rng.random()
        state = states[pair]
        if roll < 0.4:
            facts = dict(state["facts"])
            if rng.random() < 0.3:  # a purchase
                amount = round(rng.uniform(20, 200), 2)
                for k in ("purchases_total", "purchases_30d", "purchases_90d", "purchases_365d"):
                    facts[k] = int(facts.get(k) or 0) + 1
                for k in ("revenue_total", "revenue_30d", "revenue_90d", "revenue_365d"):
                    facts[k] = round(float(facts.get(k) or 0) + amount, 2)
                facts["days_since_last_purchase"] = 0.0
                facts["last_purchase_at"] = NOW.isoformat()
            elif facts.get("days_since_last_purchase") is not None:
                facts["days_since_last_purchase"] += round(rng.uniform(1, 30), 1)
            if rng.random() < 0.1:
                facts["open_tickets"] = rng.choice([0, 1, 2])
            if rng.random() < 0.05:
                facts["latest_nps"] = rng.randint(0, 10)
            if isinstance(facts.get("tracked_30d"), dict) and rng.random() < 0.5:
                viewed = facts["tracked_30d"].get("Product Viewed", 0)
                facts["tracked_30d"] = {"Product Viewed": max(0, viewed + rng.randint(-2, 3))}
            to_stage = rng.choice(NEXT_STAGE[state["stage"]])
            data: dict[str, Any] = {
                "from_stage": state["stage"],
                "to_stage": to_stage,
                "at": NOW,
                "cause": "rule",
                "facts": facts,
            }
            state.update(stage=to_stage, facts=facts)
            out.append(("lifecycle.stage_changed", pair, "clm/stage-engine", data))
        elif roll < 0.8:
            old = state["scores"]
            if old:
                rr, rf, rm = (
                    min(5, max(1, old[k] + rng.choice([-1, *[0] * 8, 1])))
                    for k in ("rfm_recency", "rfm_frequency", "rfm_monetary")
                )
                clv = float(old["clv"]) * rng.uniform(0.9, 1.12)
                churn = min(1.0, max(0.0, old["churn_probability"] + rng.uniform(-0.05, 0.05)))
            else:  # scored for the first time
                rr, rf, rm = (rng.randint(1, 5) for _ in range(3))
                clv, churn = rng.uniform(0, 1500), rng.random()
            data = {
                "clv": Decimal(f"{clv:.2f}"),
                "churn_probability": round(churn, 4),
                "p_alive": round(1 - churn, 4),
                "expected_purchases": round((1 - churn) * rf * 0.8, 3),
                "model": "bgnbd",
                "rfm_recency": rr,
                "rfm_frequency": rf,
                "rfm_monetary": rm,
                "rfm_cell": f"{rr}{rf}{rm}",
                "rfm_segment": rfm_segment(rr, rf, rm),
            }
            state["scores"] = {**data, "clv": str(data["clv"])}
            out.append(("lifecycle.score_updated", pair, "clm/scoring", data))
        else:
            traits = {k: state["traits"].get(k) for k in ("plan", "country", "locale")}
            traits["marketing_opt_in"] = state["traits"].get("marketing_opt_in")
            change = rng.random()
            if change < 0.1:
                traits["plan"] = rng.choice(PLANS)
            elif change < 0.2:
                traits["marketing_opt_in"] = not traits["marketing_opt_in"]
            state["traits"] = {**state["traits"], **traits}
            out.append(("web.identified", pair, "web/app", {"traits": traits}))
    return out


async def states_of(conn: asyncpg.Connection, pairs: list[int]) -> dict[int, dict[str, Any]]:
    """The projection of one twin of each pair (the other holds the same)."""
    rows = await conn.fetch(
        "SELECT customer_id, stage, traits, facts, scores FROM campaigns.customers"
        " WHERE customer_id = ANY($1::text[])",
        [customer(2 * p) for p in pairs],
    )
    return {
        int(r["customer_id"][1:]) // 2: {
            "stage": r["stage"],
            **{k: json.loads(r[k]) for k in ("traits", "facts", "scores")},
        }
        for r in rows
    }


def encode(
    events: list[tuple[str, int, str, dict[str, Any]]], twin: int, run: str, topics: Topics
) -> list[tuple[str, bytes, bytes]]:
    """The stream for one twin of each pair: (topic, key, value), encoded before the clock
    starts (the producer's work is not the service's)."""
    out = []
    for k, (kind, pair, source, data) in enumerate(events):
        subject = customer(2 * pair + twin)
        event = new_event(kind, id=f"{run}-{k}", source=source, subject=subject, data=data)
        topic = {
            "lifecycle.stage_changed": topics.transitions,
            "lifecycle.score_updated": topics.scores,
        }.get(kind) or topics.domain(kind)
        out.append((topic, subject.encode(), encode_structured(event)))
    return out


async def produce(
    bootstrap: str, messages: list[tuple[str, bytes, bytes]], rate: float | None
) -> None:
    """At `rate` per second (10 ms ticks), or all at once."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        started, sent, pending = time.perf_counter(), 0, []
        while sent < len(messages):
            due = len(messages)
            if rate is not None:
                due = min(due, int((time.perf_counter() - started) * rate) + 1)
            for topic, key, value in messages[sent:due]:
                pending.append(await producer.send(topic, value, key=key))
            sent = due
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def postgres_cpu(data_dir: Path) -> float:
    """CPU time of PostgreSQL: the postmaster, its live children and those it reaped."""
    root = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
    t = root.cpu_times()
    total = float(t.user + t.system + t.children_user + t.children_system)
    for child in root.children():
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


def start_service(
    db_url: str, bootstrap: str, port: int, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **(extra or {}),
        "CLM_DATABASE_URL": db_url,
        "CLM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CLM_TOPIC_PARTITIONS": str(PARTITIONS),
        "CLM_LOG_LEVEL": "WARNING",
        "CLM_CAMPAIGNS_PORT": str(port),
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from clm_campaigns.cli import app; app()", "serve"], env=env
    )


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


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples named exactly `name` (labels ignored)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in "{ "
    )


class Bench:
    def __init__(self, args: argparse.Namespace, pg: EmbeddedPostgres, bootstrap: str) -> None:
        self.args, self.pg, self.bootstrap = args, pg, bootstrap
        self.topics = Topics("clm.", PARTITIONS)
        self.service: subprocess.Popen[bytes] | None = None
        self.results: dict[str, Any] = {}

    async def processed(self, conn: asyncpg.Connection) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM campaigns.processed_events WHERE consumer_group = $1",
                GROUP,
            )
        )

    async def send(
        self,
        conn: asyncpg.Connection,
        http: httpx.AsyncClient,
        messages: list[Any],
        *,
        backlog: bool = False,
        profile: str = "",
    ) -> dict[str, float]:
        """Offer the messages at --rate (or, with `backlog`, all of them while the service
        is stopped, so it then reads full batches) and wait until the service applied them
        all: the service's and PostgreSQL's CPU per event, the wall time, batch sizes."""
        assert self.service is not None
        before = await self.processed(conn)
        m0 = (await http.get("/metrics")).text
        cpu, pg_cpu = cpu_seconds(self.service.pid), postgres_cpu(self.pg.data_dir)
        spy = self.profiler(profile)
        if backlog:
            # SIGSTOP for the second or two producing takes, well within the group's
            # session timeout: no rebalance.
            self.service.send_signal(signal.SIGSTOP)
            try:
                await produce(self.bootstrap, messages, None)
            finally:
                self.service.send_signal(signal.SIGCONT)
            started = time.perf_counter()
        else:
            started = time.perf_counter()
            await produce(self.bootstrap, messages, self.args.rate)
        deadline = time.monotonic() + len(messages) / self.args.rate + 900
        while await self.processed(conn) < before + len(messages):
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not apply the stream in time")
            await asyncio.sleep(0.2)
        wall = time.perf_counter() - started
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait()
        cpu = cpu_seconds(self.service.pid) - cpu
        pg_cpu = postgres_cpu(self.pg.data_dir) - pg_cpu
        m1 = (await http.get("/metrics")).text
        n = len(messages)

        def delta(name: str) -> float:
            return metric(m1, name) - metric(m0, name)

        batches = delta("clm_consumer_batch_size_messages_count")
        return {
            "events": n,
            "wall_s": wall,
            "cpu_ms": 1000 * cpu / n,
            "pg_cpu_ms": 1000 * pg_cpu / n,
            "batch_ms": 1000 * delta("clm_consumer_batch_duration_seconds_sum") / n,
            "batch_size": delta("clm_consumer_batch_size_messages_sum") / max(1.0, batches),
            "changes": delta("clm_campaigns_segment_changes_total"),
        }

    def profiler(self, name: str) -> subprocess.Popen[bytes] | None:
        """With --profile DIR, py-spy samples the service while a stream is measured:
        DIR/<name>.txt holds collapsed stacks (flamegraph.pl or speedscope read them)."""
        if not (self.args.profile and name):
            return None
        assert self.service is not None
        Path(self.args.profile).mkdir(parents=True, exist_ok=True)
        out = Path(self.args.profile) / f"{name}.txt"
        cmd = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(self.service.pid),
            "--format",
            "raw",
        ]
        return subprocess.Popen([*cmd, "--rate", "200", "--nonblocking", "-o", str(out)])

    async def estimate(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        assert self.service is not None
        out = []
        for label, condition in ESTIMATES:
            cpu, started = cpu_seconds(self.service.pid), time.perf_counter()
            r = await http.post(
                "/v1/segments/estimate", json={"condition": condition}, headers=headers
            )
            r.raise_for_status()
            out.append(
                {
                    "label": label,
                    "condition": condition,
                    "seconds": time.perf_counter() - started,
                    "cpu_s": cpu_seconds(self.service.pid) - cpu,
                    "count": r.json()["count"],
                }
            )
            print(f"  estimate ({label}): {out[-1]['seconds']:.1f} s, count {r.json()['count']:,}")
        self.results["estimates"] = out

    async def recompute(
        self, http: httpx.AsyncClient, headers: dict[str, str], condition: str, segment: str
    ) -> tuple[str, dict[str, float]]:
        """Create (segment "") or edit a segment; seconds from the request to its
        recompute's finished_at, and the service's CPU meanwhile."""
        assert self.service is not None
        body = {"name": "bench: at risk, high value", "condition": condition}
        cpu, asked = cpu_seconds(self.service.pid), datetime.now(UTC)
        if segment:
            r = await http.put(f"/v1/segments/{segment}", json=body, headers=headers)
        else:
            r = await http.post("/v1/segments", json=body, headers=headers)
        r.raise_for_status()
        segment, version = r.json()["id"], r.json()["version"]
        while True:
            got = (await http.get(f"/v1/segments/{segment}", headers=headers)).json()
            progress = got["recompute"] or {}
            if progress.get("version") == version and progress.get("finished_at"):
                break
            await asyncio.sleep(1)  # seldom: the service answers these too
        finished = datetime.fromisoformat(progress["finished_at"])  # the same machine's clock
        return segment, {
            "seconds": (finished - asked).total_seconds(),
            "cpu_s": cpu_seconds(self.service.pid) - cpu,
            "done": progress["done"],
            "size": got["size"],
        }

    async def store_segments(self, conn: asyncpg.Connection, conditions: list[str]) -> None:
        """The other segments as the service holds them once computed (a recompute of
        each over the whole base would take the run's time, and is measured above)."""
        finished = {
            "version": 1,
            "done": self.args.customers,
            "total": self.args.customers,
            "after": customer(self.args.customers - 1),
            "finished_at": datetime.now(UTC).isoformat(),
        }
        rows = [(f"seg_bench{k:03d}", f"bench {k}", c) for k, c in enumerate(conditions, 1)]
        await conn.executemany(
            """INSERT INTO campaigns.segments (id, version, name, condition, updated_by,
                   recompute) VALUES ($1, 1, $2, $3, 'bench', $4::jsonb)""",
            [(i, n, c, json.dumps(finished)) for i, n, c in rows],
        )
        await conn.executemany(
            """INSERT INTO campaigns.segment_versions (segment_id, version, change, name,
                   description, condition, changed_by) VALUES ($1, 1, 'created', $2, '', $3,
                   'bench')""",
            rows,
        )

    async def members_of(self, db_url: str, ids: list[str], conditions: list[str]) -> None:
        """Membership of the customers the stream touches in every live segment, by the
        service's own live path: as if the segments had been live all along."""
        engine = create_async_engine(db_url)
        try:
            sessions = async_sessionmaker(engine)
            cache, evaluated = segments.SegmentCache(), 0.0
            compiled = [
                CompiledSegment(f"eval{k}", 1, compile_segment_condition(c))
                for k, c in enumerate(conditions)
            ]
            for start in range(0, len(ids), 1000):
                async with sessions() as session, session.begin():
                    states = await repository.load_customers(session, ids[start : start + 1000])
                    began = time.process_time()  # the evaluation alone, for the report
                    for segment in compiled:
                        for state in states.values():
                            segment.matches(state)
                    evaluated += time.process_time() - began
                    plan = await segments.evaluate(session, cache, states.values())
                    await repository.save_segment_maps(session, states.values())
                    await segments.write(session, plan)
            self.results["eval_us"] = 1e6 * evaluated / len(ids)
        finally:
            await engine.dispose()

    async def run(self, db_url: str, port: int) -> None:
        args = self.args
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{base_url}/readyz")
        key = await make_admin_key(db_url)
        headers = {"Authorization": f"Bearer {key}"}
        dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        pairs = pick_pairs(args.events + 400, args.customers, seed=7)
        states = await states_of(conn, pairs)
        pick = set(pairs[: len(pairs) * 400 // (args.events + 400)])  # warm-up customers
        warm = stream(400, {p: s for p, s in states.items() if p in pick}, seed=8)
        events = stream(args.events, {p: s for p, s in states.items() if p not in pick}, seed=9)
        half = len(events) // 2  # paced, then as a backlog
        baseline, with_segments = (
            encode(events, 0, "base", self.topics),
            encode(events, 1, "segs", self.topics),
        )
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
            # Warm-up: the consumer group joins and connections open.
            await self.send(conn, http, encode(warm, 0, "warm0", self.topics))
            print("baseline stream (no segment) ...")
            self.results["baseline"] = await self.send(
                conn, http, baseline[:half], profile="baseline"
            )
            self.results["baseline_backlog"] = await self.send(
                conn, http, baseline[half:], backlog=True, profile="baseline_backlog"
            )
            print(f"  {self.results['baseline']}\n  {self.results['baseline_backlog']}")
            print("estimates ...")
            await self.estimate(http, headers)
            print("create one segment ...")
            segment, self.results["created"] = await self.recompute(
                http, headers, CONDITIONS[0], ""
            )
            print(f"  {self.results['created']}")
            print("edit it ...")
            _, self.results["edited"] = await self.recompute(http, headers, EDITED, segment)
            print(f"  {self.results['edited']}")
            others = [CONDITIONS[k % len(CONDITIONS)] for k in range(1, args.segments)]
            await self.store_segments(conn, others)
            touched = sorted({customer(2 * pair + 1) for _, pair, _, _ in events + warm})
            started = time.perf_counter()
            await self.members_of(db_url, touched, [EDITED, *others])
            self.results["members_s"] = time.perf_counter() - started
            self.results["members_rows"] = await conn.fetchval(
                "SELECT count(*) FROM campaigns.segment_members"
            )
            await conn.execute("ANALYZE campaigns.segment_members")
            # Warm-up again: the service compiles the segments once per version.
            await self.send(conn, http, encode(warm, 1, "warm1", self.topics))
            print(f"the same stream with {args.segments} segments ...")
            self.results["segments"] = await self.send(
                conn, http, with_segments[:half], profile="segments"
            )
            self.results["segments_backlog"] = await self.send(
                conn, http, with_segments[half:], backlog=True, profile="segments_backlog"
            )
            print(f"  {self.results['segments']}\n  {self.results['segments_backlog']}")
        await conn.close()


async def make_admin_key(url: str) -> str:
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            _, plaintext = await auth.create_key(session, role=auth.Role.admin, name="bench")
        return plaintext
    finally:
        await engine.dispose()


async def fill(dsn: str, customers: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute(FILL, customers)
        await conn.execute("VACUUM ANALYZE campaigns.customers")
        return time.perf_counter() - started
    finally:
        await conn.close()


# Membership maintenance in the consumer: the frames a profile's samples count as its own.
MEMBERSHIP_FRAMES = ("evaluate (clm_campaigns/segments.py", "write (clm_campaigns/segments.py")


def membership_share(path: Path) -> float:
    """The share of a py-spy raw profile's samples spent in membership maintenance:
    steadier than a CPU ratio of two runs, which the machine's other work moves."""
    total = inside = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        if any(frame in stack for frame in MEMBERSHIP_FRAMES):
            inside += int(count)
    return inside / max(1, total)


def report(args: argparse.Namespace, r: dict[str, Any], filled: float) -> None:
    k, n = args.segments, args.customers
    rows = [("what", "figure", "goal")]
    for key in ("", "_backlog"):
        base, segs = r["baseline" + key], r["segments" + key]
        how = f"at {args.rate:,.0f}/s" if not key else "as a backlog (service stopped meanwhile)"
        rows += [
            (f"{base['events']:,} events {how}", "", ""),
            ("  service CPU per event, no segment (baseline)", f"{base['cpu_ms']:.3f} ms", ""),
            (f"  service CPU per event, {k} segments", f"{segs['cpu_ms']:.3f} ms", ""),
            ("    ratio to baseline", f"{segs['cpu_ms'] / base['cpu_ms']:.2f}x", "<= 1.20x"),
            ("    events per service CPU-second, baseline / segments",
             f"{1000 / base['cpu_ms']:,.0f} / {1000 / segs['cpu_ms']:,.0f}", ""),
            ("  PostgreSQL CPU per event, baseline / segments",
             f"{base['pg_cpu_ms']:.3f} / {segs['pg_cpu_ms']:.3f} ms", ""),
            ("  batch time per event, baseline / segments",
             f"{base['batch_ms']:.3f} / {segs['batch_ms']:.3f} ms", ""),
            ("  mean batch, baseline / segments",
             f"{base['batch_size']:.0f} / {segs['batch_size']:.0f} events", ""),
            ("  drained in, baseline / segments",
             f"{base['wall_s']:.1f} / {segs['wall_s']:.1f} s", ""),
            ("  membership changes (entered + left)", f"{segs['changes']:,.0f}", ""),
        ]  # fmt: skip
        if args.profile:
            share = membership_share(Path(args.profile) / f"segments{key}.txt")
            rows.append(
                (
                    "  profiled: membership's share of the service's samples, per event",
                    f"{100 * share:.1f}% = {1000 * share * segs['cpu_ms']:.0f} µs",
                    "",
                )
            )
    rows.append(
        (f"CEL evaluation of the {k} segments, per customer", f"{r['eval_us']:,.0f} µs", "")
    )
    for e in r["estimates"]:
        rows.append(
            (
                f"estimate over {n:,} customers: {e['label']}",
                f"{e['seconds']:.2f} s ({e['cpu_s']:.1f} CPU s)",
                "<= 10 s",
            )
        )
    for what, key in (("new segment: POST -> computed", "created"),
                      ("edited segment: PUT -> recompute.finished_at", "edited")):  # fmt: skip
        x = r[key]
        rows.append(
            (
                f"{what} ({x['done']:,} customers, {x['size']:,} members)",
                f"{x['seconds']:.1f} s ({x['cpu_s']:.1f} CPU s)",
                "<= 60 s" if key == "edited" else "",
            )
        )
    load = os.getloadavg()[0]
    print(
        f"\nsegments benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {n:,} customers "
        f"(filled in {filled:.0f} s), {k} segments; {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, 1-minute load at the end {load:.1f}"
    )
    widths = [max(len(str(row[i])) for row in rows) + 2 for i in range(3)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"(members of the {k} segments for the customers the streams touch, by the live "
        f"path: {r['members_s']:.1f} s; {r['members_rows']:,} membership rows)"
    )


def main(args: argparse.Namespace) -> None:
    for condition in [*CONDITIONS, EDITED, *(c for _, c in ESTIMATES)]:
        compile_segment_condition(condition)  # a typo here fails now, not after the fill
    with tempfile.TemporaryDirectory(prefix="clm-bench-segments-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        broker = TansuBroker(log_path=Path(tmp) / "tansu.log")
        pg.start()
        broker.start()
        try:
            url = pg.url()
            migrate_auth(url)
            migrate(Path(clm_campaigns.__file__).parent / "migrations", url=url, schema=SCHEMA)
            topics = Topics("clm.", PARTITIONS)
            asyncio.run(ensure_topics(broker.bootstrap_servers, topics.all()))
            print(f"filling {args.customers:,} customers ...")
            filled = asyncio.run(fill(pg.dsn, args.customers))
            print(f"  {filled:.1f} s")
            bench = Bench(args, pg, broker.bootstrap_servers)
            port = free_port()
            bench.service = start_service(url, broker.bootstrap_servers, port)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument(
        "--events", type=int, default=40_000, help="events per stream (half paced, half backlog)"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="events/s offered")
    parser.add_argument("--profile", default="", help="directory for py-spy profiles")
    main(parser.parse_args())
