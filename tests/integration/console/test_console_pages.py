"""Pages, sign-in and the assets the console serves itself (it works offline)."""

from __future__ import annotations

import re

from consolekit import console
from kit import bearer, make_key

PAGES = [
    "/",
    "/customers",
    "/triggers",
    "/triggers/new",
    "/results",
    "/dead-letters",
    "/model",
    "/segments",
    "/segments/new",
    "/rfm",
    "/journeys",
    "/journeys/new",
]


async def test_whoami_tells_the_console_which_role_a_key_has(migrated: str) -> None:
    read, admin = await make_key(migrated, "read"), await make_key(migrated, "admin")
    source = await make_key(migrated, "source", source="shop")
    async with console(migrated) as (client, _):
        assert (await client.get("/v1/whoami", headers=bearer(read))).json()["role"] == "read"
        assert (await client.get("/v1/whoami", headers=bearer(admin))).json()["role"] == "admin"
        assert (await client.get("/v1/whoami", headers=bearer(source))).status_code == 403
        assert (await client.get("/v1/whoami", headers=bearer("clm_read_nope"))).status_code == 401


async def test_every_page_says_what_it_shows_and_loads_nothing_from_elsewhere(
    migrated: str,
) -> None:
    async with console(migrated) as (client, _):
        for path in [*PAGES, "/login"]:
            page = await client.get(path)
            assert page.status_code == 200, path
            assert re.search(r'<p class="intro">\s*\S', page.text), path
            assert "default-src 'self'" in page.headers["content-security-policy"]
            # Every script and stylesheet comes from the console itself ("#" loads nothing:
            # a link the page's script fills in).
            for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
                assert ref.startswith("/") or ref == "#", (path, ref)


async def test_charts_use_plotly_js_from_the_installed_plotly_package(migrated: str) -> None:
    async with console(migrated) as (client, _):
        overview = await client.get("/")
        assert '<script src="/vendor/plotly.min.js"' in overview.text
        js = await client.get("/vendor/plotly.min.js", headers={"accept-encoding": "gzip"})
        assert js.status_code == 200
        assert js.headers["content-encoding"] == "gzip"
        assert js.text.startswith("/**\n* plotly.js v")
        assert (await client.get("/static/console.js")).status_code == 200


async def test_probes_answer_without_a_key(migrated: str) -> None:
    async with console(migrated) as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}
        assert "clm_http_requests_total" in (await client.get("/metrics")).text
