"""Alembic glue every service shares: each service keeps its own migration scripts and
its own schema (with its own alembic_version table); this runs them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from clm_events.settings import ClmSettings


def config(script_location: Path, *, url: str | None = None, schema: str | None = None) -> Config:
    """Alembic's configuration for one service's scripts (and database and schema)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if schema is not None:
        cfg.attributes["schema"] = schema
    return cfg


def migrate(script_location: Path, *, url: str, schema: str, revision: str = "head") -> None:
    """Upgrade one service's schema. Synchronous: call it before the event loop starts,
    or through `asyncio.to_thread` from async code."""
    command.upgrade(config(script_location, url=url, schema=schema), revision)


def downgrade(script_location: Path, *, url: str, schema: str, revision: str) -> None:
    """Take one service's schema back to `revision` (a rollback past a migration the
    previous release cannot read; see docs/operations.md)."""
    command.downgrade(config(script_location, url=url, schema=schema), revision)


def revisions(script_location: Path) -> tuple[str, frozenset[str]]:
    """(head, every revision) of a service's migration scripts."""
    scripts = ScriptDirectory.from_config(config(script_location))
    head = scripts.get_current_head()
    assert head is not None, f"no migrations in {script_location}"
    return head, frozenset(s.revision for s in scripts.walk_revisions())


async def schema_revision(engine: AsyncEngine, schema: str) -> str | None:
    """The revision a service's schema is migrated to (None: not migrated at all)."""
    async with engine.connect() as conn:
        exists = await conn.scalar(
            sa.text("SELECT to_regclass(:table) IS NOT NULL"),
            {"table": f'"{schema}".alembic_version'},
        )
        if not exists:
            return None
        at = await conn.scalar(sa.text(f'SELECT version_num FROM "{schema}".alembic_version'))
        return str(at) if at is not None else None


def migrate_auth(url: str) -> None:
    """Create or upgrade the shared API-key schema (see clm_events.auth)."""
    from clm_events.auth import SCHEMA

    migrate(Path(__file__).parent / "auth_migrations", url=url, schema=SCHEMA)


def run_env(target_metadata: sa.MetaData, schema: str) -> None:
    """Body of a service's `env.py`."""
    url = context.config.get_main_option("sqlalchemy.url") or ClmSettings().database_url
    schema = context.config.attributes.get("schema", schema)
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=target_metadata,
            literal_binds=True,
            version_table_schema=schema,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(url, target_metadata, schema))


async def _run_online(url: str, target_metadata: sa.MetaData, schema: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.commit()
            await conn.run_sync(_run_sync, target_metadata, schema)
            await conn.commit()
    finally:
        await engine.dispose()


def _run_sync(conn: sa.Connection, target_metadata: sa.MetaData, schema: str) -> None:
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=True,
        include_name=lambda name, type_, _parent: type_ != "schema" or name == schema,
    )
    with context.begin_transaction():
        context.run_migrations()


def create_plumbing_tables_v1(schema: str) -> None:
    """The outbox and processed-events tables as of v1 (frozen: later changes get their
    own function, so old migrations keep meaning what they meant)."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("event_id", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "processed_events",
        sa.Column("consumer_group", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column(
            "processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )
