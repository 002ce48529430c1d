"""`clm-dev run`: the whole CLM stack on one machine, with nothing installed system-wide."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

import typer

from clm_devstack import devkeys
from clm_devstack.stack import SERVICES, Stack

app = typer.Typer(help="Local CLM stack.", no_args_is_help=True)


class _Stop(Exception):
    pass


@app.callback()
def main() -> None:
    """Local CLM stack."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@app.command()
def run(
    data_dir: Path = typer.Option(
        Path(".clm"),
        envvar="CLM_DEV_DATA_DIR",
        help="Where PostgreSQL data and logs are kept across runs.",
    ),
    pg_port: int = typer.Option(54329, envvar="CLM_DEV_PG_PORT"),
    kafka_port: int = typer.Option(19092, envvar="CLM_DEV_KAFKA_PORT"),
    port_offset: int = typer.Option(
        0, envvar="CLM_DEV_PORT_OFFSET", help="Added to the services' ports 8001-8004."
    ),
) -> None:
    """Start PostgreSQL, the broker, the four services and the console; Ctrl-C stops them
    all."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    stack = Stack(
        data_dir=data_dir.resolve(),
        pg_port=pg_port,
        kafka_port=kafka_port,
        database_url=os.environ.get("CLM_DATABASE_URL"),
        bootstrap_servers=os.environ.get("CLM_KAFKA_BOOTSTRAP_SERVERS"),
        services=tuple(replace(s, port=s.port + port_offset) for s in SERVICES),
    )
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        stack.start_infrastructure()
        stack.prepare()
        keys = devkeys.ensure(stack.data_dir, stack.database_url or "")
        stack.start_services()
        typer.echo(f"\nCLM is up in {time.monotonic() - started:.1f} s")
        typer.echo(f"  database  {_redact(stack.database_url or '')}")
        typer.echo(f"  kafka     {stack.bootstrap_servers}")
        for spec in stack.services:
            typer.echo(f"  {spec.name:<13} {spec.url}  (API docs {spec.url}/docs)")
        typer.echo(f"  logs      {stack.log_dir}")
        typer.echo(_welcome(stack, keys))
        typer.echo("Press Ctrl-C to stop.")
        while True:
            stack.check_children()
            time.sleep(0.5)
    except _Stop:
        typer.echo("\nstopping...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        stack.stop()
        typer.echo("stopped")


def _welcome(stack: Stack, keys: devkeys.DevKeys) -> str:
    """The console URL, the development keys and a first event to send."""
    console, ingest = stack.spec("console").url, stack.spec("ingest").url
    event = (
        '{"specversion": "1.0", "id": "first-order-1", "source": "shop/checkout", '
        '"type": "purchase.completed", "subject": "cust-1", "time": "\'"$(date -u +%FT%TZ)"\'", '
        '"data": {"order_id": "first-order-1", "amount": "42.00", "currency": "EUR"}}'
    )
    return (
        f"\nConsole: {console}   sign in with the admin key\n"
        f"  admin key   {keys['admin']}\n"
        f"  read key    {keys['read']}\n"
        f"  source key  {keys['sources']['shop']}  (source shop; billing, support and web "
        f"keys are in {stack.data_dir / devkeys.FILE})\n"
        f"Send a first event:\n"
        f"  curl -s -X POST {ingest}/v1/events -H 'Authorization: Bearer "
        f"{keys['sources']['shop']}' -H 'Content-Type: application/cloudevents+json' "
        f"-d '{event}'\n"
        f"Then watch customer cust-1 in the console, or stream a demo population: make demo\n"
    )


def _redact(url: str) -> str:
    """Hide a password in a URL before printing it."""
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        user = rest.split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return url
