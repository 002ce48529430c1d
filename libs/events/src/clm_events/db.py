"""Database plumbing every service shares: engine, sessions, the outbox and
processed-event tables (one copy in each service's own schema), and which errors are
worth retrying."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def create_engine(url: str, *, pool_size: int = 5, application_name: str = "clm") -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        pool_pre_ping=True,  # a restarted Postgres leaves dead pooled connections behind
        connect_args={"server_settings": {"application_name": application_name}},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers (used by /readyz)."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


# SQLSTATEs that say "try the same transaction again": serialization failure, deadlock,
# and the connection / server-shutdown classes.
_RETRYABLE_SQLSTATE_PREFIXES = ("40001", "40P01", "08", "57P", "53")


def is_retryable(exc: BaseException) -> bool:
    """True for database failures that a retry of the same work can get past."""
    if isinstance(exc, (OperationalError, InterfaceError, ConnectionError, OSError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if sqlstate and str(sqlstate).startswith(_RETRYABLE_SQLSTATE_PREFIXES):
            return True
        # asyncpg's own connection errors arrive wrapped without an SQLSTATE.
        name = type(exc.orig).__name__ if exc.orig is not None else ""
        return "Connection" in name or "CannotConnectNow" in name
    return False


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    """Derived messages written in the same transaction as the state that produced them."""
    return sa.Table(
        "outbox",
        metadata,
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
        sa.Index("ix_outbox_unpublished", "id", postgresql_where=sa.text("published_at IS NULL")),
    )


def processed_events_table(metadata: sa.MetaData) -> sa.Table:
    """Idempotency keys (source, id) of events a consumer group has applied."""
    return sa.Table(
        "processed_events",
        metadata,
        sa.Column("consumer_group", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column(
            "processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
