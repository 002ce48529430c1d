"""Upgrading a database written by an earlier version keeps every customer's history and
facts: the inputs move out of the timeline into their own table, and processing goes on
from there (in-order and late events) exactly as if nothing had moved."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from kit import running
from sqlalchemy.ext.asyncio import create_async_engine
from stagekit import wait_for
from typer.testing import CliRunner

import clm_stage_engine
from clm_events import db
from clm_events.migrations import migrate, revisions
from clm_events.topics import Topics
from clm_stage_engine.cli import app as cli
from clm_stage_engine.domain.facts import facts_at
from clm_stage_engine.domain.inputs import Input, from_us, to_us
from clm_stage_engine.domain.model import DEFAULT_MODEL, compile_model
from clm_stage_engine.domain.timeline import Timeline, advance
from clm_stage_engine.handlers import StageEngine, load_timelines
from clm_stage_engine.models import SCHEMA

SCRIPTS = Path(clm_stage_engine.__file__).parent / "migrations"
T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
MODEL = compile_model(DEFAULT_MODEL, 1)


def _buy(days: int, n: int) -> Input:
    return Input(
        to_us(T0 + timedelta(days=days)), "shop", f"o{n}", "purchase.completed", {"amount": 30.0}
    )


async def _fresh_database(database_url: str) -> str:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return str(sa.make_url(database_url).set(database=name).render_as_string(hide_password=False))


async def test_upgrading_moves_inputs_out_of_timelines_and_processing_goes_on_unchanged(
    database_url: str,
) -> None:
    url = await _fresh_database(database_url)
    await asyncio.to_thread(migrate, SCRIPTS, url=url, schema=SCHEMA, revision="0002")

    # A customer as the earlier version stored them: every input inside the timeline.
    earlier = [_buy(0, 1), _buy(10, 2), _buy(40, 3)]
    old = Timeline("c-1")
    advance(old, MODEL, earlier, to_us(T0 + timedelta(days=60)))
    blob = {"i": [i.to_json() for i in old.inputs], "h": [t.compact() for t in old.history]}
    engine = db.create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"INSERT INTO {SCHEMA}.customers (customer_id, stage, evaluated_until, "
                "model_version, timeline) VALUES ('c-1', :stage, :until, 1, :blob)"
            ),
            {
                "stage": old.stage,
                "until": from_us(old.evaluated_until or 0),
                "blob": json.dumps(blob).encode(),
            },
        )
    await asyncio.to_thread(migrate, SCRIPTS, url=url, schema=SCHEMA)

    sessions = db.session_factory(engine)
    async with sessions() as s:
        moved = (await s.execute(sa.text(f"SELECT count(*) FROM {SCHEMA}.inputs"))).scalar()
        stored = (await s.execute(sa.text(f"SELECT timeline FROM {SCHEMA}.customers"))).scalar()
    assert moved == 3
    assert "i" not in json.loads(stored)

    # An event in order, then a late one that rewrites the history, through the service's
    # handler; the result equals evaluating every input at once.
    later, late = [_buy(70, 4)], [_buy(20, 5)]
    stage = StageEngine(Topics(prefix=f"t{uuid.uuid4().hex[:6]}."))
    for batch in (later, late):
        async with sessions() as s, s.begin():
            await stage.apply(s, {"c-1": batch}, publish=False)
    reference = Timeline("c-1")
    everything = sorted(earlier + later + late, key=lambda i: i.order)
    advance(reference, MODEL, everything)

    async with sessions() as s:
        row = (
            await s.execute(
                sa.text(f"SELECT stage, timeline, evaluated_until FROM {SCHEMA}.customers")
            )
        ).one()
        tl = (await load_timelines(s, {"c-1": (row.timeline, row.evaluated_until)}))["c-1"]
    assert [t.compact() for t in tl.history] == [t.compact() for t in reference.history]
    assert row.stage == reference.stage
    clock = reference.evaluated_until or 0
    assert tl.fold().facts(clock) == facts_at(everything, clock)

    # And back, as the CLI's `migrate --downgrade-to` does for a rollback.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["migrate", "--downgrade-to", "0002"],
        env={"CLM_DATABASE_URL": url},
    )
    assert result.exit_code == 0, result.output
    async with sessions() as s:
        stored = (await s.execute(sa.text(f"SELECT timeline FROM {SCHEMA}.customers"))).scalar()
    assert [tuple(i[:3]) for i in json.loads(stored)["i"]] == [
        (i.at, i.source, i.id) for i in everything
    ]
    await engine.dispose()


async def test_the_service_waits_for_its_schema_before_it_consumes(
    database_url: str, bootstrap_servers: str
) -> None:
    """A pod of a new release can start before the migrations Job has finished: it serves
    /readyz as not ready, naming the schema revision, and starts consuming once migrated."""
    url = await _fresh_database(database_url)
    await asyncio.to_thread(migrate, SCRIPTS, url=url, schema=SCHEMA, revision="0002")
    async with running("clm_stage_engine", url, bootstrap_servers) as (client, runtime):
        waiting = await client.get("/readyz")
        assert waiting.status_code == 503
        head, _ = revisions(SCRIPTS)
        assert waiting.json()["checks"]["schema"] == f"behind: at 0002, this release needs {head}"
        assert runtime.consumers[0].assignment() == set()  # not even in its group
        await asyncio.to_thread(migrate, SCRIPTS, url=url, schema=SCHEMA)
        ready = await wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        assert ready.status_code == 200 and "schema" not in ready.json()["checks"]
