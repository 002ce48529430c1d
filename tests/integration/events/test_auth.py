"""API keys as an operator and a caller meet them: created by the CLI, shown once,
stored hashed, checked per role, revoked."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from typer.testing import CliRunner

from clm_events.auth import AdminKey, KeyStore, ReadKey, api_keys
from clm_events.migrations import migrate_auth
from clm_stage_engine.cli import app as stage_engine_cli


@pytest.fixture(scope="session")
async def auth_db(database_url: str) -> str:
    await asyncio.to_thread(migrate_auth, database_url)
    return database_url


def _app(engine: AsyncEngine) -> FastAPI:
    app = FastAPI()
    app.state.keys = KeyStore(async_sessionmaker(engine), ttl=0)

    @app.get("/report")
    async def report(key: ReadKey) -> dict[str, str]:
        return {"caller": key.id}

    @app.put("/model")
    async def change(key: AdminKey) -> dict[str, str]:
        return {"caller": key.id}

    return app


def _cli(database_url: str, *args: str) -> str:
    result = CliRunner().invoke(
        stage_engine_cli, ["keys", *args], env={"CLM_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    return result.output


def _created(output: str) -> tuple[str, str]:
    key_id = output.split()[0]
    plaintext = next(line for line in output.splitlines() if line.startswith("key: "))[5:]
    return key_id, plaintext


async def test_keys_from_the_cli_open_only_what_their_role_allows(
    auth_db: str, engine: AsyncEngine
) -> None:
    read_id, read_key = await asyncio.to_thread(
        lambda: _created(_cli(auth_db, "create", "--role", "read", "--name", "analyst"))
    )
    _, admin_key = await asyncio.to_thread(
        lambda: _created(_cli(auth_db, "create", "--role", "admin"))
    )
    _, source_key = await asyncio.to_thread(
        lambda: _created(_cli(auth_db, "create", "--source", "shop"))
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app(engine)), base_url="http://t"
    ) as client:
        missing = await client.get("/report")
        assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
        assert "Bearer" in missing.headers["www-authenticate"]
        bad = await client.get("/report", headers={"Authorization": "Bearer clm_read_nope"})
        assert bad.status_code == 401

        bearer = {"Authorization": f"Bearer {read_key}"}
        assert (await client.get("/report", headers=bearer)).json() == {"caller": read_id}
        # Segment's libraries send the key as the Basic username with an empty password.
        basic = {"Authorization": "Basic " + base64.b64encode(f"{read_key}:".encode()).decode()}
        assert (await client.get("/report", headers=basic)).status_code == 200

        forbidden = await client.put("/model", headers=bearer)
        assert forbidden.status_code == 403 and "needs a admin key" in forbidden.json()["detail"]
        admin = {"Authorization": f"Bearer {admin_key}"}
        assert (await client.put("/model", headers=admin)).status_code == 200
        assert (await client.get("/report", headers=admin)).status_code == 200
        source = {"Authorization": f"Bearer {source_key}"}
        assert (await client.get("/report", headers=source)).status_code == 403

        await asyncio.to_thread(_cli, auth_db, "revoke", read_id)
        assert (await client.get("/report", headers=bearer)).status_code == 401

    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(api_keys.c.key_hash))).scalars().all()
    assert read_key not in stored and all(len(h) == 64 for h in stored)  # only hashes


async def test_the_key_list_never_shows_secrets(auth_db: str) -> None:
    created = await asyncio.to_thread(_cli, auth_db, "create", "--source", "billing")
    _, plaintext = _created(created)
    listing = await asyncio.to_thread(_cli, auth_db, "list")
    assert "billing" in listing and plaintext not in listing


def test_a_source_key_must_name_its_source(database_url: str) -> None:
    result = CliRunner().invoke(
        stage_engine_cli,
        ["keys", "create", "--role", "source"],
        env={"CLM_DATABASE_URL": database_url},
    )
    assert result.exit_code != 0
    assert "needs --source" in result.output
