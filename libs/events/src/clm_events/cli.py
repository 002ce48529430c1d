"""The command line every service shares: `serve` and `migrate`. A service adds its own
commands to the returned Typer app (e.g. `clm-ingest keys create`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession

from clm_events import auth, db
from clm_events.auth import Role
from clm_events.migrations import downgrade, migrate, migrate_auth
from clm_events.service import ServiceSettings

T = TypeVar("T")


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
    def migrate_cmd(
        downgrade_to: str = typer.Option(
            None, help="Take the schema back to this revision instead (a rollback)."
        ),
    ) -> None:
        """Bring this service's database schema (and the shared API-key schema) up to date."""
        url = settings().common.database_url
        if downgrade_to is not None:
            downgrade(migrations, url=url, schema=schema, revision=downgrade_to)
            typer.echo(f"{name}: schema {schema} is at revision {downgrade_to}")
            return
        migrate_auth(url)
        migrate(migrations, url=url, schema=schema)
        typer.echo(f"{name}: schema {schema} is up to date")

    cli.add_typer(keys_cli(settings), name="keys")
    return cli


def keys_cli(settings: type[ServiceSettings]) -> typer.Typer:
    keys = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)

    def run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def go() -> T:
            engine = db.create_engine(settings().common.database_url, pool_size=1)
            try:
                async with db.session_factory(engine)() as session, session.begin():
                    return await work(session)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    @keys.command("create")
    def create(
        role: Role = typer.Option(None, help="source, read or admin (source if --source given)."),
        source: str = typer.Option(None, help="The one event source a source key may publish."),
        name: str = typer.Option(None, help="Who or what uses the key."),
    ) -> None:
        """Create a key and print it once: only its hash is stored."""
        role = role or (Role.source if source else Role.read)
        try:
            key, plaintext = run(
                lambda s: auth.create_key(s, role=role, source=source, name=name or role.value)
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(f"{key.id} ({key.role.value}{', source ' + source if source else ''})")
        typer.echo(f"key: {plaintext}")
        typer.echo("Store it now: it cannot be shown again.", err=True)

    @keys.command("list")
    def list_() -> None:
        """List keys (never their secrets)."""
        for k in run(auth.list_keys):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            typer.echo(f"{k.id}\t{k.role.value}\t{k.source or '-'}\t{k.name}\t{state}")

    @keys.command("revoke")
    def revoke(key_id: str) -> None:
        """Revoke a key; it stops working within seconds on every service."""
        if not run(lambda s: auth.revoke_key(s, key_id)):
            typer.echo(f"no active key {key_id}", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked {key_id}")

    return keys
