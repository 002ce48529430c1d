"""`clm-console serve | migrate | keys`, like every service's CLI; the console has no
schema of its own, so `migrate` brings only the shared key schema up to date."""

import typer
import uvicorn

from clm_console.config import Settings
from clm_events.cli import keys_cli
from clm_events.migrations import migrate_auth

app = typer.Typer(help="CLM console: the web pages for marketing ops.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """CLM console."""


@app.command()
def serve(
    host: str = typer.Option(None, help="Listen address (default from settings)."),
    port: int = typer.Option(None, help="Listen port (default from settings)."),
) -> None:
    """Serve the console's pages and its API proxy."""
    s = Settings()
    uvicorn.run(
        "clm_console.main:create_app",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        log_config=None,
        access_log=False,
    )


@app.command("migrate")
def migrate_cmd() -> None:
    """Bring the shared API-key schema up to date (the console has no schema of its own)."""
    migrate_auth(Settings().common.database_url)
    typer.echo("console: schema clm_auth is up to date")


app.add_typer(keys_cli(Settings), name="keys")
