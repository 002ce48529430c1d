"""The customer page's export and erase controls: the markup, the script's calls to
ingest's privacy API, and the proxy carrying them with the operator's key. (The browser
test drives them against the real stack.)"""

from __future__ import annotations

import json
import re

import httpx
from consolekit import console
from kit import bearer, make_key


async def test_the_customer_page_offers_export_and_an_erase_that_asks_for_the_id_first(
    migrated: str,
) -> None:
    async with console(migrated) as (client, _):
        page = (await client.get("/customers")).text
        assert '<script src="/static/privacy.js" defer>' in page
        # Both controls sit in a section only admin keys see, like every change control.
        section = re.search(
            r'<section class="card admin-only" id="privacy">.*?</section>', page, re.S
        )
        assert section and 'id="export"' in section[0] and 'id="erase"' in section[0]
        dialog = re.search(r'<dialog id="erase-dialog".*?</dialog>', page, re.S)
        assert dialog
        text = " ".join(dialog[0].split())
        assert 'id="erase-who"' in text  # filled with the id, name and email shown
        assert "erased in every service" in text
        assert "Statistics keep anonymous counts" in text
        assert "This cannot be undone" in text
        assert re.search(r'<button type="submit" id="erase-confirm"[^>]* disabled>', text)
        assert 'id="erase-typed"' in text

        js = await client.get("/static/privacy.js")
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]
        for call in (
            'api("ingest", `/v1/privacy/exports/${encodeURIComponent(id)}`)',
            '"/v1/privacy/erasures", { method: "POST", body: { customer_id: who.id } }',
            'api("ingest", `/v1/privacy/erasures/${encodeURIComponent(request.request_id)}`)',
            "`clm-export-${id}.json`",
            "typed.value.trim() !== who.id",
        ):
            assert call in js.text, call
        main = (await client.get("/static/console.js")).text
        assert "privacyPanel({ stopRefresh: () => clearInterval(timer) })" in main


async def test_erasure_and_export_calls_reach_ingest_with_the_operators_key(
    migrated: str,
) -> None:
    admin = await make_key(migrated, "admin")
    request = {
        "request_id": "era_1",
        "status": "pending",
        "customer_ids": ["cust-1", "anon-1"],
        "services": {"ingest": None, "stage-engine": None, "scoring": None, "campaigns": None},
        "requested_at": "2025-01-01T00:00:00+00:00",
        "requested_by": "ops",
    }

    def ingest(r: httpx.Request) -> httpx.Response:
        if r.method == "POST" and r.url.path == "/v1/privacy/erasures":
            return httpx.Response(202, json={**request, "echo": json.loads(r.content)})
        if r.url.path == "/v1/privacy/exports/cust-1":
            return httpx.Response(200, json={"customer_id": "cust-1", "services": {}})
        return httpx.Response(404, json={"detail": "no such erasure request"})

    async with console(migrated) as (client, backends):
        backends.stubs["ingest"] = ingest
        asked = await client.post(
            "/api/ingest/v1/privacy/erasures", json={"customer_id": "cust-1"}, headers=bearer(admin)
        )
        assert asked.status_code == 202
        assert asked.json()["echo"] == {"customer_id": "cust-1"}
        exported = await client.get("/api/ingest/v1/privacy/exports/cust-1", headers=bearer(admin))
        assert exported.json()["customer_id"] == "cust-1"
        assert exported.headers["cache-control"] == "no-store"  # personal data stays uncached
        unknown = await client.get("/api/ingest/v1/privacy/erasures/era_9", headers=bearer(admin))
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "no such erasure request"  # the page shows it
        assert [r.headers["authorization"] for r in backends.seen] == [f"Bearer {admin}"] * 3
