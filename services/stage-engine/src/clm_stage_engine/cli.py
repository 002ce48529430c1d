import asyncio
from datetime import UTC, datetime
from pathlib import Path

import typer

from clm_events import db
from clm_events.cli import service_cli
from clm_events.privacy import Tombstones
from clm_events.topics import Topics
from clm_stage_engine import backfill as backfill_mod
from clm_stage_engine.config import Settings
from clm_stage_engine.handlers import StageEngine
from clm_stage_engine.models import SCHEMA, privacy_tombstones

app = service_cli(
    name="stage-engine",
    app_path="clm_stage_engine.main:create_app",
    migrations=Path(__file__).parent / "migrations",
    schema=SCHEMA,
    settings=Settings,
)


def _until(value: str | None) -> datetime | None:
    if value is None:
        return None
    if value == "now":
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter("--until takes 'now' or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise typer.BadParameter("--until needs a timezone offset, e.g. 2026-01-01T00:00:00Z")
    return moment


@app.command()
def backfill(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV of past events."),
    until: str = typer.Option(
        None, help="Evaluate timers up to this time ('now' or RFC 3339); default: the newest event."
    ),
    source: str = typer.Option("backfill", help="Event source for rows of an orders CSV."),
    publish: bool = typer.Option(True, help="Publish the transitions (through the outbox)."),
    send_actions: bool = typer.Option(
        False,
        help="Let campaigns act on the published transitions (still not on those older than "
        "a trigger's maximum age); by default a backfill sends nothing to customers.",
    ),
) -> None:
    """Load historical events with event time as the clock (same result as live)."""
    clock = _until(until)
    try:
        events = backfill_mod.read_file(path, source=source)
    except backfill_mod.BackfillError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        typer.echo("nothing was loaded", err=True)
        raise typer.Exit(1) from None
    settings = Settings()

    async def go() -> backfill_mod.Summary:
        common = settings.common
        engine = db.create_engine(common.database_url, pool_size=1)
        try:
            topics = Topics(common.topic_prefix, common.topic_partitions)
            tombstones = Tombstones.of(privacy_tombstones, common)
            return await backfill_mod.run(
                db.session_factory(engine),
                StageEngine(topics),
                events,
                tombstones=tombstones,
                until=clock,
                publish=publish,
                send_actions=send_actions,
            )
        finally:
            await engine.dispose()

    summary = asyncio.run(go())
    watermark = summary.watermark.isoformat() if summary.watermark else "-"
    typer.echo(
        f"{summary.events} events, {summary.customers} customers, "
        f"{summary.transitions} transitions written; evaluated up to {watermark}"
        + (f"; {summary.erased} erased customers skipped" if summary.erased else "")
    )
