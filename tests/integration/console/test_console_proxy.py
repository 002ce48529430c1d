"""The console's proxy: it forwards the user's own key (so each service still decides
what a read or an admin key may do), and nothing outside the services' /v1 APIs."""

from __future__ import annotations

import httpx
from consolekit import console
from kit import bearer, make_key, running


async def test_proxy_forwards_the_callers_key_and_the_service_enforces_its_role(
    migrated: str, bootstrap_servers: str
) -> None:
    read, admin = await make_key(migrated, "read"), await make_key(migrated, "admin")
    async with (
        running("clm_stage_engine", migrated, bootstrap_servers) as (stage_engine, _),
        console(migrated) as (client, backends),
    ):
        backends.clients["stage-engine"] = stage_engine

        stages = await client.get("/api/stage-engine/v1/stages", headers=bearer(read))
        assert stages.status_code == 200
        assert "prospect" in stages.json()["stages"]
        assert stages.headers["cache-control"] == "no-store"

        model = await client.get("/api/stage-engine/v1/lifecycle-model", headers=bearer(read))
        body = {"stages": model.json()["stages"], "rules": model.json()["rules"]}
        refused = await client.put(
            "/api/stage-engine/v1/lifecycle-model", json=body, headers=bearer(read)
        )
        assert refused.status_code == 403
        assert (await client.get("/api/stage-engine/v1/stages")).status_code == 401

        # An invalid model comes back as the service's own 422, errors and all.
        bad = {**body, "rules": [{"name": "r", "to": "active", "when": "visits > 3"}]}
        invalid = await client.put(
            "/api/stage-engine/v1/lifecycle-model", json=bad, headers=bearer(admin)
        )
        assert invalid.status_code == 422
        assert invalid.json()["errors"][0]["path"] == "rules[0].when"


async def test_an_admin_creates_and_edits_a_trigger_through_the_proxy(
    migrated: str, bootstrap_servers: str
) -> None:
    admin = await make_key(migrated, "admin")
    trigger = {
        "name": "Welcome",
        "on": {"kind": "transition", "to_stage": "onboarding"},
        "action": {"channel": "kafka", "topic": "crm.welcome", "payload": "{}"},
        "enabled": False,
    }
    async with (
        running("clm_campaigns", migrated, bootstrap_servers) as (campaigns, _),
        console(migrated) as (client, backends),
    ):
        backends.clients["campaigns"] = campaigns
        created = await client.post(
            "/api/campaigns/v1/triggers", json=trigger, headers=bearer(admin)
        )
        assert created.status_code == 201, created.text
        path = f"/api/campaigns/v1/triggers/{created.json()['id']}"
        got = await client.get(path, headers=bearer(admin))
        assert got.headers["etag"] == '"1"'

        stale = {**bearer(admin), "If-Match": '"7"'}
        assert (await client.put(path, json=trigger, headers=stale)).status_code == 412
        fresh = {**bearer(admin), "If-Match": '"1"'}
        assert (await client.put(path, json=trigger, headers=fresh)).json()["version"] == 2


async def test_only_v1_paths_of_the_four_services_are_forwarded(migrated: str) -> None:
    async with console(migrated) as (client, backends):
        backends.stubs["stage-engine"] = lambda r: httpx.Response(200, json={"path": r.url.path})
        for path in (
            "/api/stage-engine/metrics",
            "/api/stage-engine/docs",
            "/api/stage-engine/v1",
            "/api/stage-engine/v1/../metrics",
            "/api/stage-engine/v1/%2e%2e/metrics",
            "/api/stage-engine/v1/customers//x",
            "/api/database/v1/anything",
        ):
            assert (await client.get(path)).status_code == 404, path
        assert backends.seen == []

        # A customer id holding a slash stays one path segment.
        answer = await client.get("/api/stage-engine/v1/customers/a%2Fb?x=1")
        assert answer.status_code == 200
        assert backends.seen[0].url.raw_path == b"/v1/customers/a%2Fb?x=1"


async def test_oversized_bodies_are_refused_before_reaching_a_service(migrated: str) -> None:
    async with console(migrated, max_body_bytes=2048) as (client, backends):
        backends.stubs["campaigns"] = lambda r: httpx.Response(201)
        answer = await client.post("/api/campaigns/v1/triggers", content=b"x" * 5000)
        assert answer.status_code == 413
        assert backends.seen == []


async def test_a_service_that_is_down_or_slow_is_reported_not_hung_on(migrated: str) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with console(migrated) as (client, backends):
        backends.stubs["scoring"] = slow
        assert (await client.get("/api/scoring/v1/model")).status_code == 504
        down = await client.get("/api/ingest/v1/deadletters")
        assert down.status_code == 502
        assert "ingest" in down.json()["detail"]
