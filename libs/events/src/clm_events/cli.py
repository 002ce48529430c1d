"""The command line every service shares: `serve` and `migrate`. A service adds its own
commands to the returned Typer app (e.g. `clm-ingest keys create`)."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from clm_events.migrations import migrate
from clm_events.service import ServiceSettings


def service_cli(
    *, name: str, app_path: str, migrations: Path, schema: str, settings: type[ServiceSettings]
) -> typer.Typer:
    cli = typer.Typer(help=f"CLM {name} service.", no_args_is_help=True)

    @cli.command()
    def serve(
        host: str = typer.Option(None, help="Listen address (default from settings)."),
        port: int = typer.Option(None, help="Listen port (default from settings)."),
    ) -> None:
        """Run the HTTP API, consumers and outbox relay."""
        s = settings()
        uvicorn.run(
            app_path,
            factory=True,
            host=host or s.host,
            port=port or s.port,
            log_config=None,
            access_log=False,
        )

    @cli.command("migrate")
    def migrate_cmd() -> None:
        """Bring this service's database schema up to date."""
        migrate(migrations, url=settings().common.database_url, schema=schema)
        typer.echo(f"{name}: schema {schema} is up to date")

    return cli
