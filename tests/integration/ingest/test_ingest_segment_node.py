"""The official Node library, `@segment/analytics-node`, unchanged, pointed at a real
ingest server: every call of the Segment spec is accepted and mapped, and a bad message
in its batch costs only itself. Needs Node and npm (the fixture installs the library
into a temporary folder); skipped without them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from ingestkit import events_with_ids

VERSION = "3.1.0"

SCRIPT = """
const { Analytics } = require('@segment/analytics-node')
const [host, writeKey, run] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, flushAt: 20, flushInterval: 500 })
const failed = []
analytics.on('error', (err) => failed.push(String(err.reason || err)))
const user = { userId: `cust-${run}` }
analytics.page({ anonymousId: `anon-${run}`, name: 'Home', messageId: `${run}-page`,
  properties: { url: 'https://shop.example/' } })
analytics.identify({ ...user, anonymousId: `anon-${run}`, traits: { plan: 'pro' },
  messageId: `${run}-identify` })
analytics.track({ ...user, event: 'Product Viewed', properties: { sku: 'A' },
  messageId: `${run}-viewed` })
analytics.track({ ...user, event: 'Order Completed', messageId: `${run}-order`,
  properties: { order_id: run, revenue: 20, currency: 'EUR' } })
analytics.track({ ...user, event: 'Order Completed', messageId: `${run}-bad`,
  properties: { order_id: run, revenue: 'lots', currency: 'EUR' } })
analytics.screen({ ...user, name: 'Basket', properties: { items: 1 }, messageId: `${run}-screen` })
analytics.group({ ...user, groupId: 'acme', traits: {}, messageId: `${run}-group` })
analytics.alias({ ...user, previousId: `old-${run}`, messageId: `${run}-alias` })
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  console.log(JSON.stringify({ failed }))
})
"""


@pytest.fixture(scope="module")
def node_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node and npm are not installed")
    folder = tmp_path_factory.mktemp("segment-node")
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            f"@segment/analytics-node@{VERSION}",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (folder / "send.js").write_text(SCRIPT)
    return folder


async def test_every_call_of_the_node_library_is_accepted_and_mapped(
    node_library: Path, served: tuple[str, Any], write_key: str, bootstrap_servers: str
) -> None:
    url, runtime = served
    run = uuid.uuid4().hex[:6]
    sent = await asyncio.to_thread(
        subprocess.run,
        ["node", "send.js", url, write_key, run],
        cwd=node_library,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(sent.stdout) == {"failed": []}  # the library saw its batch accepted

    names = ("page", "identify", "identify:link", "viewed", "screen", "alias")
    web = await events_with_ids(
        bootstrap_servers, runtime.topics.domain("web"), [f"{run}-{n}" for n in names], prefix=run
    )
    purchases = await events_with_ids(
        bootstrap_servers, runtime.topics.domain("purchase"), [f"{run}-order"], prefix=run
    )
    types = {e["id"].removeprefix(f"{run}-"): e["type"] for e in web + purchases}
    assert types == {
        "page": "web.page_viewed",
        "identify": "web.identified",
        "identify:link": "identity.linked",
        "viewed": "web.tracked",
        "order": "purchase.completed",
        "screen": "web.screen_viewed",
        "alias": "identity.linked",
    }  # group keeps nothing; the bad order is dead-lettered
    by_id = {e["id"]: e for e in web + purchases}
    assert by_id[f"{run}-page"]["subject"] == f"anon-{run}"
    assert all(e["subject"] == f"cust-{run}" for i, e in by_id.items() if i != f"{run}-page")
    assert len(by_id) == len(web + purchases)  # none twice
