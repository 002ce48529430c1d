"""Scores in the history, through ingest, stage engine and scoring on the real broker and
database: rules reading the churn probability see it as of each moment, so the same
orders give the same history however they were sent; the scores the stage engine
evaluates are the ones scoring serves."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from kit import bearer, fresh_database, make_key, purchase, running, until
from pipelinekit import stage_engine

SOURCE = "shop/checkout"
BATCH = {"Content-Type": "application/cloudevents-batch+json"}
ONE = {"Content-Type": "application/cloudevents+json"}


@dataclass
class Services:
    ingest: httpx.AsyncClient
    stages: httpx.AsyncClient
    scoring: httpx.AsyncClient
    read: dict[str, str]
    write: dict[str, str]

    async def customer(self, customer: str) -> dict[str, Any]:
        r = await self.stages.get(f"/v1/customers/{customer}", headers=self.read)
        return r.json() if r.status_code == 200 else {}

    async def history(self, customer: str) -> list[tuple[Any, ...]]:
        r = await self.stages.get(f"/v1/customers/{customer}/transitions", headers=self.read)
        assert r.status_code == 200, r.text
        return [
            (t["at"], t["from_stage"], t["to_stage"], t["cause"], t["facts"])
            for t in r.json()["transitions"]
        ]


@asynccontextmanager
async def services(database_url: str, bootstrap: str) -> AsyncIterator[Services]:
    prefix = f"sh{uuid.uuid4().hex[:8]}."
    async with (
        stage_engine(database_url, bootstrap, prefix) as (stages, _),
        running("clm_scoring", database_url, bootstrap, topic_prefix=prefix) as (scoring, _),
        running("clm_ingest", database_url, bootstrap, topic_prefix=prefix) as (ingest, _),
    ):
        s = Services(
            ingest,
            stages,
            scoring,
            bearer(await make_key(database_url, "read")),
            bearer(await make_key(database_url, "source", SOURCE)),
        )
        # Scoring fits at start and announces the model; the stage engine adopts it.
        await until(lambda: _score_model(s), "the stage engine to adopt the served model")
        yield s


async def _score_model(s: Services) -> dict[str, Any] | None:
    r = await s.stages.get("/v1/lifecycle-model", headers=s.read)
    model: dict[str, Any] | None = r.json().get("score_model")
    return model


NOW = datetime.now(UTC).replace(microsecond=0)  # one clock for every customer's orders


def _order(customer: str, n: int, days_ago: float) -> dict[str, Any]:
    moment = NOW - timedelta(days=days_ago)
    return purchase(customer, f"{customer}-{n}", "40.00", time=moment.isoformat())


async def _settled(s: Services, customer: str, purchases: int) -> dict[str, Any]:
    """The customer once every purchase is in and the timer evaluated them to today."""
    today = datetime.now(UTC).date().isoformat()

    async def check() -> dict[str, Any] | None:
        c = await s.customer(customer)
        done = (
            c.get("facts", {}).get("purchases_total") == purchases
            and (c.get("evaluated_until") or "") >= today
        )
        return c if done else None

    result: dict[str, Any] = await until(check, f"{customer} to settle")
    return result


async def test_weekly_orders_give_one_history_however_they_are_sent_and_never_at_risk(
    database_url: str, bootstrap_servers: str
) -> None:
    """Three weekly orders, the last six days ago: sent one call at a time, each after the
    previous was scored, or in one request, the history is the same and never at_risk
    (scored as of each order, two weekly orders are no lapse)."""
    u = uuid.uuid4().hex[:6]
    one_by_one, together = f"weekly-a-{u}", f"weekly-b-{u}"
    async with fresh_database(database_url) as db, services(db, bootstrap_servers) as s:
        for n, days_ago in enumerate((20, 13, 6)):
            body = json.dumps(_order(one_by_one, n, days_ago))
            r = await s.ingest.post("/v1/events", content=body, headers=s.write | ONE)
            assert r.status_code == 202, r.text

            async def scored(n: int = n) -> bool:
                r = await s.scoring.get(f"/v1/customers/{one_by_one}/score", headers=s.read)
                return r.status_code == 200 and r.json()["summary"]["repeat_purchases"] == n

            await until(scored, f"order {n} to be scored")
        batch = json.dumps([_order(together, n, d) for n, d in enumerate((20, 13, 6))])
        r = await s.ingest.post("/v1/events", content=batch, headers=s.write | BATCH)
        assert r.status_code == 202, r.text

        a, b = await _settled(s, one_by_one, 3), await _settled(s, together, 3)
        history_a, history_b = await s.history(one_by_one), await s.history(together)
        assert [h[1:4] for h in history_a] == [h[1:4] for h in history_b]
        assert [h[0] for h in history_a] == [h[0] for h in history_b]
        # The deciding facts are those of their time, scores included.
        assert [h[4] for h in history_a] == [h[4] for h in history_b]
        assert "at_risk" not in {h[2] for h in history_a}
        assert a["stage"] == b["stage"] and a["stage"] != "at_risk"


async def test_the_stage_engine_scores_a_customer_as_scoring_does(
    database_url: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:6]
    customer = f"agree-{u}"
    orders = [_order(customer, n, d) for n, d in enumerate((300, 200, 120, 45))]
    refund = purchase(
        customer,
        f"{customer}-1",
        "15.00",
        id=f"ref-{u}",
        type="purchase.refunded",
        time=(NOW - timedelta(days=100)).isoformat(),
    )
    async with fresh_database(database_url) as db, services(db, bootstrap_servers) as s:
        r = await s.ingest.post(
            "/v1/events", content=json.dumps([*orders, refund]), headers=s.write | BATCH
        )
        assert r.status_code == 202, r.text
        mine = await _settled(s, customer, 4)

        async def score() -> dict[str, Any] | None:
            r = await s.scoring.get(f"/v1/customers/{customer}/score", headers=s.read)
            return r.json() if r.status_code == 200 else None

        theirs = await until(score, "scoring to score the customer")
        ours = mine["scores"]
        assert ours["score_model_version"] == theirs["model_version"]
        assert ours["as_of"] == str(theirs["as_of"])[:10]
        assert ours["clv"] == round(theirs["clv"], 2) and theirs["clv"] > 0
        for name in ("p_alive", "churn_probability", "expected_purchases", "expected_spend"):
            assert abs(ours[name] - theirs[name]) < 1e-9, name
        # The facts rules read carry the same numbers.
        assert mine["facts"]["clv"] == ours["clv"]
        assert abs(mine["facts"]["churn_probability"] - theirs["churn_probability"]) < 1e-6
