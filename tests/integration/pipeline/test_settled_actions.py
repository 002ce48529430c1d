"""What a marketing team sees in its first week, through the whole pipeline (ingest over
HTTP, stage engine, campaigns, a webhook receiver) on the real broker and database: past
orders sent one Segment call at a time give at most one at_risk message for one lapse; a
purchase dated months ago after one today gives one Welcome; a backfill sends nothing
unless asked."""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from kit import bearer, make_key, running, serving, until
from pipelinekit import stage_engine
from segment.analytics import Client
from typer.testing import CliRunner

from clm_stage_engine.cli import app as stage_engine_cli

ALLOW_LOCAL = {"webhook_allowed_networks": ["127.0.0.1/32"]}


@dataclass
class Pipeline:
    ingest_url: str
    stages: httpx.AsyncClient
    campaigns: httpx.AsyncClient
    prefix: str
    read: dict[str, str]
    admin: dict[str, str]
    write_key: str

    async def trigger(self, hook: str, to_stage: str, **extra: Any) -> str:
        body = {
            "name": f"to {to_stage}",
            "on": {"kind": "transition", "to_stage": to_stage},
            "action": {
                "channel": "webhook",
                "url": hook,
                "payload": '{"customer": {{ customer.id | tojson }}, '
                '"to": {{ event.data.to_stage | tojson }}}',
            },
            **extra,
        }
        created = await self.campaigns.post("/v1/triggers", json=body, headers=self.admin)
        assert created.status_code == 201, created.text
        trigger_id: str = created.json()["id"]
        return trigger_id

    async def customer(self, customer: str) -> dict[str, Any]:
        r = await self.stages.get(f"/v1/customers/{customer}", headers=self.read)
        return r.json() if r.status_code == 200 else {}

    async def actions(self, customer: str) -> list[dict[str, Any]]:
        r = await self.campaigns.get(
            "/v1/actions", params={"customer_id": customer}, headers=self.read
        )
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()
        return rows


@asynccontextmanager
async def pipeline(database_url: str, bootstrap: str) -> AsyncIterator[Pipeline]:
    prefix = f"pl{uuid.uuid4().hex[:8]}."
    async with (
        stage_engine(database_url, bootstrap, prefix) as (stages, _),
        running("clm_campaigns", database_url, bootstrap, topic_prefix=prefix, **ALLOW_LOCAL) as (
            campaigns,
            _,
        ),
        serving("clm_ingest", database_url, bootstrap, topic_prefix=prefix) as (url, _),
    ):
        yield Pipeline(
            url,
            stages,
            campaigns,
            prefix,
            bearer(await make_key(database_url, "read")),
            bearer(await make_key(database_url, "admin")),
            await make_key(database_url, "source", "shop"),
        )


def _final(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["status"] not in ("pending", "sending") for r in rows)


def _ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


async def test_one_lapse_sent_as_separate_segment_calls_gives_at_most_one_at_risk_action(
    migrated: str, bootstrap_servers: str, receiver: Any
) -> None:
    async with pipeline(migrated, bootstrap_servers) as p:
        history = await p.trigger(receiver.url, "at_risk", max_age_seconds=None)
        default = await p.trigger(receiver.url, "at_risk")  # a day's maximum age
        cust = f"seg-{uuid.uuid4().hex[:8]}"
        segment = Client(p.write_key, host=p.ingest_url, sync_mode=True, max_retries=0)
        for n, days in enumerate((300, 280, 260)):
            order = {"order_id": f"{cust}-{n}", "revenue": 30.0, "currency": "EUR"}
            await asyncio.to_thread(
                segment.track, cust, "Order Completed", order, timestamp=_ago(days)
            )

            async def seen(n: int = n) -> bool:
                facts = (await p.customer(cust)).get("facts") or {}
                return facts.get("purchases_total") == n + 1

            await until(seen, f"order {n} at the stage engine")
        await until(lambda: _lapsed(p, cust), "the customer to lapse once their history settled")

        async def at_risk_settled() -> list[dict[str, Any]] | None:
            rows = [r for r in await p.actions(cust) if r["trigger_id"] in (history, default)]
            return rows if len(rows) >= 2 and _final(rows) else None

        rows = await until(at_risk_settled, "the at_risk actions")
        await asyncio.sleep(1.0)  # anything more would be a duplicate
        rows = [r for r in await p.actions(cust) if r["trigger_id"] in (history, default)]
    outcomes = sorted(
        (r["trigger_id"] == history, r["status"], r["suppressed_reason"]) for r in rows
    )
    assert outcomes == [(False, "suppressed", "stale"), (True, "delivered", None)]
    assert [r.json()["to"] for r in receiver.received] == ["at_risk"]


async def _lapsed(p: Pipeline, cust: str) -> bool:
    return (await p.customer(cust)).get("stage") == "lapsed"


async def test_a_purchase_dated_months_ago_after_one_today_gives_one_welcome(
    migrated: str, bootstrap_servers: str, receiver: Any
) -> None:
    async with pipeline(migrated, bootstrap_servers) as p:
        welcome = await p.trigger(receiver.url, "onboarding")
        at_risk = await p.trigger(receiver.url, "at_risk")
        cust = f"late-{uuid.uuid4().hex[:8]}"
        segment = Client(p.write_key, host=p.ingest_url, sync_mode=True, max_retries=0)
        today = {"order_id": f"{cust}-now", "revenue": 30.0, "currency": "EUR"}
        await asyncio.to_thread(segment.track, cust, "Order Completed", today)

        async def welcomed() -> bool:
            return any(r["status"] == "delivered" for r in await p.actions(cust))

        await until(welcomed, "the Welcome")
        months_ago = {"order_id": f"{cust}-old", "revenue": 30.0, "currency": "EUR"}
        await asyncio.to_thread(
            segment.track, cust, "Order Completed", months_ago, timestamp=_ago(100)
        )

        async def rewritten() -> list[dict[str, Any]] | None:
            rows = await p.actions(cust)
            return rows if len(rows) >= 3 and _final(rows) else None

        await until(rewritten, "the actions of the rewritten history")
        await asyncio.sleep(1.0)
        rows = await p.actions(cust)
    delivered = [r for r in rows if r["status"] == "delivered"]
    assert [r["trigger_id"] for r in delivered] == [welcome]
    assert {r["suppressed_reason"] for r in rows if r["trigger_id"] == at_risk} == {"stale"}
    assert [r.json()["to"] for r in receiver.received] == ["onboarding"]


async def test_a_backfill_sends_nothing_unless_asked(
    migrated: str, bootstrap_servers: str, receiver: Any, tmp_path: Path
) -> None:
    async with pipeline(migrated, bootstrap_servers) as p:
        await p.trigger(receiver.url, "onboarding")
        quiet, asked, old = (f"bf-{n}-{uuid.uuid4().hex[:8]}" for n in range(3))
        for customers, flags in (([quiet], []), ([asked, old], ["--send-actions"])):
            path = tmp_path / f"{customers[0]}.csv"
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["customer_id", "order_id", "time", "amount", "currency"])
                for c in customers:
                    days = 200 if c == old else 0.5
                    w.writerow([c, f"{c}-1", _ago(days).isoformat(), "30.00", "EUR"])
            env = {
                "CLM_DATABASE_URL": migrated,
                "CLM_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
                "CLM_TOPIC_PREFIX": p.prefix,
                "CLM_LOG_JSON": "false",
            }
            result = await asyncio.to_thread(
                CliRunner().invoke,
                stage_engine_cli,
                ["backfill", str(path), "--until", "now", *flags],
                env=env,
            )
            assert result.exit_code == 0, result.output

        async def all_decided() -> dict[str, list[dict[str, Any]]] | None:
            found = {c: await p.actions(c) for c in (quiet, asked, old)}
            return found if all(_final(rows) for rows in found.values()) else None

        found = await until(all_decided, "the backfilled customers' actions")
    outcomes = {
        c: [(r["status"], r["suppressed_reason"]) for r in rows] for c, rows in found.items()
    }
    assert outcomes == {
        quiet: [("suppressed", "backfill")],
        asked: [("delivered", None)],
        old: [("suppressed", "stale")],
    }
    assert len(receiver.received) == 1
