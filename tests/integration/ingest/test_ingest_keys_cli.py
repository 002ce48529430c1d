"""`clm-ingest keys create --source shop` prints a key once that then publishes for that
source; `keys revoke` makes it refused."""

from __future__ import annotations

import asyncio
import json
import re

from kit import bearer, purchase, running
from typer.testing import CliRunner

from clm_ingest.cli import app

STRUCTURED = {"Content-Type": "application/cloudevents+json"}


async def test_a_key_created_with_the_cli_publishes_until_revoked(
    migrated: str, bootstrap_servers: str
) -> None:
    runner = CliRunner()
    env = {"CLM_DATABASE_URL": migrated}

    def cli(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    created = await asyncio.to_thread(cli, "keys", "create", "--source", "shop", "--name", "t")
    key_id = re.search(r"^(key_\w+) \(source, source shop\)", created, re.M)
    plaintext = re.search(r"^key: (\S+)$", created, re.M)
    assert key_id and plaintext
    listed = await asyncio.to_thread(cli, "keys", "list")
    assert f"{key_id[1]}\tsource\tshop\tt\tactive" in listed
    assert plaintext[1] not in listed  # shown once, stored hashed

    event = json.dumps(purchase("cust-1", "1"))
    async with running("clm_ingest", migrated, bootstrap_servers) as (client, _):
        headers = bearer(plaintext[1]) | STRUCTURED
        assert (await client.post("/v1/events", content=event, headers=headers)).status_code == 202
    await asyncio.to_thread(cli, "keys", "revoke", key_id[1])
    async with running("clm_ingest", migrated, bootstrap_servers) as (client, _):
        refused = await client.post("/v1/events", content=event, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["detail"] == "invalid or revoked API key"
