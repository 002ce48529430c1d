"""Backfill equals live; two instances in one group equal one."""

from __future__ import annotations

import asyncio
import csv
import json
import random
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit import bearer, fresh_database, make_key, produce
from stagekit import buy, domain_topic, event, instance, served, utc, wait_for
from typer.testing import CliRunner

from clm_stage_engine.cli import app as cli


def _journey(customer: str, tag: str, year: int, rng: random.Random) -> list[dict[str, Any]]:
    events = [event(customer, f"su-{tag}", "web.signed_up", f"{year}-01-02T08:00:00Z")]
    day = rng.randint(1, 40)
    for n in range(rng.randint(1, 6)):
        events.append(
            buy(customer, f"{tag}-{n}", f"{year}-{1 + day // 28:02d}-{1 + day % 28:02d}T10:00:00Z")
        )
        day += rng.choice([5, 15, 30, 60, 120])
        if day >= 28 * 12:
            break
    if rng.random() < 0.5:
        events.append(
            event(
                customer,
                f"nps-{tag}",
                "support.nps_submitted",
                f"{year}-06-15T10:00:00Z",
                score=rng.randint(0, 10),
            )
        )
    return events


async def _produce(bootstrap: str, prefix: str, events: list[dict[str, Any]]) -> None:
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_topic.setdefault(domain_topic(prefix, e), []).append(e)
    await asyncio.gather(*(produce(bootstrap, t, es) for t, es in by_topic.items()))


def _rename(events: list[dict[str, Any]], customer: str) -> list[dict[str, Any]]:
    return [{**e, "subject": customer} for e in events]


def _write_csv(path: Path, events: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "source", "type", "subject", "time", "data"])
        for e in events:
            w.writerow(
                [e["id"], e["source"], e["type"], e["subject"], e["time"], json.dumps(e["data"])]
            )


async def _backfill(path: Path, database_url: str, *args: str) -> Any:
    env = {"CLM_DATABASE_URL": database_url, "CLM_LOG_JSON": "false"}
    return await asyncio.to_thread(CliRunner().invoke, cli, ["backfill", str(path), *args], env=env)


async def _history(client: httpx.AsyncClient, customer: str, headers: dict[str, str]) -> list[Any]:
    r = await client.get(f"/v1/customers/{customer}/transitions", headers=headers)
    assert r.status_code == 200, r.text
    return [
        (
            t["at"],
            t["from_stage"],
            t["to_stage"],
            t["cause"],
            (t["cause_event"] or {}).get("id"),
            t["facts"],
        )
        for t in r.json()["transitions"]
    ]


async def _caught_up(
    client: httpx.AsyncClient, customers: list[str], headers: dict[str, str], since: datetime
) -> None:
    """Wait until every customer exists and the timer has evaluated them past `since`."""

    async def clocks() -> list[Any]:
        out = []
        for c in customers:
            r = await client.get(f"/v1/customers/{c}", headers=headers)
            out.append(r.json().get("evaluated_until") if r.status_code == 200 else None)
        return out

    result = await wait_for(clocks, lambda cs: all(c and utc(c) >= since for c in cs), timeout=40)
    assert all(c and utc(c) >= since for c in result), result


@pytest.mark.parametrize("scores", [False, True], ids=["rules-only", "score-reading-rules"])
async def test_backfill_gives_the_stages_and_history_of_live_processing(
    migrated: str, bootstrap_servers: str, tmp_path: Path, scores: bool
) -> None:
    """With a served score model, the default rules read churn probability and CLV at
    every moment: backfill must still give live processing's history, facts included."""
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(fresh_database(migrated)) if scores else migrated
        await _backfill_equals_live(db, bootstrap_servers, tmp_path, scores)


async def _backfill_equals_live(
    migrated: str, bootstrap_servers: str, tmp_path: Path, scores: bool
) -> None:
    u = uuid.uuid4().hex[:8]
    rng = random.Random(7)
    live = [f"live-{u}-{n}" for n in range(6)]
    journeys = {c: _journey(c, f"{u}-{n}", 2013, rng) for n, c in enumerate(live)}
    read = bearer(await make_key(migrated, "read"))
    started = datetime.now(UTC)
    prefix = f"bf{u}."
    async with instance(migrated, bootstrap_servers, prefix) as (client, _):
        if scores:  # top decile 150: some of these customers are loyal by CLV alone
            await produce(bootstrap_servers, f"{prefix}models", [served(1, clv_top_decile=150.0)])
            model = await wait_for(
                lambda: client.get("/v1/lifecycle-model", headers=read),
                lambda r: r.json()["score_model"] is not None,
            )
            assert model.json()["score_model"]["clv_top_decile"] == 150.0
        await _produce(bootstrap_servers, prefix, [e for es in journeys.values() for e in es])
        await _caught_up(client, live, read, started)

        # The same events for twin customers, from a CSV, evaluated up to now like the live ones.
        twins = {c: c.replace("live-", "back-") for c in live}
        rows = [e for c, events in journeys.items() for e in _rename(events, twins[c])]
        _write_csv(tmp_path / "history.csv", rows)
        result = await _backfill(
            tmp_path / "history.csv", migrated, "--until", "now", "--no-publish"
        )
        assert result.exit_code == 0, result.output
        assert f"{len(rows)} events, {len(live)} customers" in result.output

        deciding_scores = 0
        for c in live:
            assert await _history(client, twins[c], read) == await _history(client, c, read)
            a = (await client.get(f"/v1/customers/{c}", headers=read)).json()
            b = (await client.get(f"/v1/customers/{twins[c]}", headers=read)).json()
            assert (a["stage"], a["since"]) == (b["stage"], b["since"])
            assert a["scores"] == b["scores"]
            facts = [t[5] for t in await _history(client, c, read)]
            assert facts == [t[5] for t in await _history(client, twins[c], read)]
            deciding_scores += sum(1 for f in facts if f.get("clv") is not None)
        assert (deciding_scores > 0) == scores

        # Running it again changes nothing: events are deduplicated by (source, id).
        before = await _history(client, twins[live[0]], read)
        again = await _backfill(
            tmp_path / "history.csv", migrated, "--until", "now", "--no-publish"
        )
        assert again.exit_code == 0 and "0 transitions written" in again.output
        assert await _history(client, twins[live[0]], read) == before


async def test_backfill_refuses_a_file_with_bad_rows_and_loads_nothing(
    migrated: str, tmp_path: Path
) -> None:
    u = uuid.uuid4().hex[:8]
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,order_id,time,amount,currency\n"
        f"ok-{u},1,2014-01-01T00:00:00Z,10.00,EUR\n"
        f"bad-{u},2,yesterday,10.00,EUR\n"
        f"bad-{u},3,2014-01-02T00:00:00Z,-5,EUR\n"
    )
    result = await _backfill(path, migrated)
    assert result.exit_code == 1
    assert "line 3: invalid event: time:" in result.output
    assert "line 4: invalid event: data.amount:" in result.output
    assert "nothing was loaded" in result.output
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(migrated)
    async with engine.connect() as conn:
        n = await conn.scalar(
            sa.text("SELECT count(*) FROM stage_engine.customers WHERE customer_id = :c"),
            {"c": f"ok-{u}"},
        )
    await engine.dispose()
    assert n == 0


async def test_two_instances_in_one_group_split_the_work_and_agree_with_one(
    migrated: str, bootstrap_servers: str, tmp_path: Path
) -> None:
    u = uuid.uuid4().hex[:8]
    rng = random.Random(11)
    customers = [f"two-{u}-{n}" for n in range(16)]
    journeys = {c: _journey(c, f"t{u}-{n}", 2015, rng) for n, c in enumerate(customers)}
    read = bearer(await make_key(migrated, "read"))
    prefix, group = f"sc{u}.", f"g-{u}"
    started = datetime.now(UTC)
    async with (
        instance(migrated, bootstrap_servers, prefix, group) as (client, a),
        instance(migrated, bootstrap_servers, prefix, group) as (_, b),
    ):
        # Both members hold partitions before anything is produced.
        assigned = await wait_for(lambda: _assignments(a, b), lambda s: all(s), timeout=40)
        assert all(assigned), "the group never split the partitions"
        values = [e for events in journeys.values() for e in events]
        rng.shuffle(values)
        await _produce(bootstrap_servers, prefix, [*values, *values[:10]])  # some twice
        await _caught_up(client, customers, read, started)
        assert not (a.consumers[0].assignment() & b.consumers[0].assignment())

        # One instance (the backfill path: every event at once) gives the same result.
        twins = {c: c.replace("two-", "one-") for c in customers}
        rows = [e for c, events in journeys.items() for e in _rename(events, twins[c])]
        _write_csv(tmp_path / "one.csv", rows)
        result = await _backfill(tmp_path / "one.csv", migrated, "--until", "now", "--no-publish")
        assert result.exit_code == 0, result.output
        for c in customers:
            assert await _history(client, c, read) == await _history(client, twins[c], read)


async def _assignments(*instances: Any) -> list[bool]:
    return [bool(i.consumers[0].assignment()) for i in instances]
