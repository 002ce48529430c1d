"""Development keys for the local stack: created on the first `make run`, kept in the
data dir (next to the database they live in) and printed at every start, so a new user
can sign in to the console and send a first event without reading the key docs.

They are ordinary keys (`clm-<service> keys list` shows them as "dev ..."), revocable like
any other; if one was revoked or the database was replaced, a new set is made."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TypedDict

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_events import auth

SOURCES = ("shop", "billing", "support", "web")
FILE = "dev-keys.json"


class DevKeys(TypedDict):
    admin: str
    read: str
    sources: dict[str, str]  # source name -> its key


async def _valid(database_url: str, keys: DevKeys) -> bool:
    wanted = {auth.hash_key(p) for p in (keys["admin"], keys["read"], *keys["sources"].values())}
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                auth.api_keys.select().where(
                    auth.api_keys.c.key_hash.in_(wanted), auth.api_keys.c.revoked_at.is_(None)
                )
            )
            return len(rows.all()) == len(wanted)
    finally:
        await engine.dispose()


async def _create(database_url: str) -> DevKeys:
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            _, admin = await auth.create_key(session, role=auth.Role.admin, name="dev admin")
            _, read = await auth.create_key(session, role=auth.Role.read, name="dev read")
            sources = {}
            for source in SOURCES:
                _, sources[source] = await auth.create_key(
                    session, role=auth.Role.source, name=f"dev {source}", source=source
                )
        return {"admin": admin, "read": read, "sources": sources}
    finally:
        await engine.dispose()


def ensure(data_dir: Path, database_url: str) -> DevKeys:
    """The data dir's development keys, made (or remade) if missing or no longer valid."""
    path = data_dir / FILE
    if path.exists():
        keys: DevKeys = json.loads(path.read_text())
        if asyncio.run(_valid(database_url, keys)):
            return keys
    keys = asyncio.run(_create(database_url))
    path.write_text(json.dumps(keys, indent=2) + "\n")
    path.chmod(0o600)  # they are credentials
    return keys
