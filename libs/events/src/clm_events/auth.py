"""API keys: stored hashed, created and revoked from the CLI, checked on every request.

Keys are a concern every service shares, so they live in one schema (`clm_auth`) owned by
this library rather than by any one service. Roles: `source` keys publish events of
one source (ingest only), `read` keys read customer data and stats, `admin` keys also
change the lifecycle model and triggers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

SCHEMA = "clm_auth"
metadata = sa.MetaData(schema=SCHEMA)
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)


class Role(StrEnum):
    source = "source"
    read = "read"
    admin = "admin"


@dataclass(frozen=True)
class ApiKey:
    """Who is calling: what handlers see and what change records name."""

    id: str
    name: str
    role: Role
    source: str | None = None


@dataclass(frozen=True)
class KeyRecord(ApiKey):
    created_at: datetime | None = None
    revoked_at: datetime | None = None


def hash_key(plaintext: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(plaintext.encode()).hexdigest()


async def create_key(
    session: AsyncSession, *, role: Role, name: str, source: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key; return it with its plaintext, which is never stored or shown again."""
    if (role is Role.source) != (source is not None):
        raise ValueError("a source key needs --source, and only a source key takes one")
    key_id = f"key_{secrets.token_hex(6)}"
    plaintext = f"clm_{role.value}_{secrets.token_urlsafe(32)}"
    await session.execute(
        api_keys.insert().values(
            id=key_id, name=name, role=role.value, source=source, key_hash=hash_key(plaintext)
        )
    )
    return ApiKey(key_id, name, role, source), plaintext


async def revoke_key(session: AsyncSession, key_id: str) -> bool:
    result = await session.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_keys(session: AsyncSession) -> list[KeyRecord]:
    rows = await session.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
    return [
        KeyRecord(r.id, r.name, Role(r.role), r.source, r.created_at, r.revoked_at) for r in rows
    ]


def credential(authorization: str | None) -> str | None:
    """The key in an Authorization header: `Bearer <key>`, or HTTP Basic with the key as
    the username (what Segment's libraries send)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


class KeyStore:
    """Looks keys up by hash, with a short cache so hot paths do not query per request.
    A revoked key stops working within `ttl` seconds."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl: float = 5.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def lookup(self, plaintext: str) -> ApiKey | None:
        digest = hash_key(plaintext)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._sessions() as session:
            row = (
                await session.execute(
                    sa.select(api_keys).where(
                        api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        key = ApiKey(row.id, row.name, Role(row.role), row.source) if row else None
        if len(self._cache) > 10_000:  # bad keys must not grow memory without bound
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, key)
        return key


UNAUTHORIZED = {"WWW-Authenticate": 'Bearer, Basic realm="clm"'}
# Which roles may call an endpoint that needs a given role.
_ALLOWED = {
    Role.source: {Role.source},
    Role.read: {Role.read, Role.admin},
    Role.admin: {Role.admin},
}


def require(role: Role) -> Callable[[Request], Awaitable[ApiKey]]:
    """FastAPI dependency: the calling key, if it may act as `role`; else 401 or 403.

    The app must have a `KeyStore` at `app.state.keys`.
    """

    async def dependency(request: Request) -> ApiKey:
        plaintext = credential(request.headers.get("authorization"))
        if plaintext is None:
            raise HTTPException(
                401, "missing API key (Authorization: Bearer <key>)", headers=UNAUTHORIZED
            )
        store: KeyStore = request.app.state.keys
        key = await store.lookup(plaintext)
        if key is None:
            raise HTTPException(401, "invalid or revoked API key", headers=UNAUTHORIZED)
        if key.role not in _ALLOWED[role]:
            raise HTTPException(
                403, f"a {key.role.value} key cannot do this; it needs a {role.value} key"
            )
        return key

    return dependency


# Endpoint parameter types, e.g. `async def put_model(..., caller: AdminKey)`.
SourceKey = Annotated[ApiKey, Depends(require(Role.source))]
ReadKey = Annotated[ApiKey, Depends(require(Role.read))]
AdminKey = Annotated[ApiKey, Depends(require(Role.admin))]
