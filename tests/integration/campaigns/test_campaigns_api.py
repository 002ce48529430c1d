"""Trigger management over HTTP: versioned changes with who and when, validation that
names the field, SSRF and template-escape refusal, and role checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from campaignkit import webhook_trigger
from kit import bearer, running

HOOK = "https://hooks.example.com/clm"


def _errors(response: Any) -> str:
    assert response.status_code == 422, response.text
    return str(response.json()["detail"])


async def test_trigger_changes_are_versioned_with_who_and_when(
    migrated: str, bootstrap_servers: str, admin_key: str, read_key: str
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        admin, reader = bearer(admin_key), bearer(read_key)
        created = await client.post("/v1/triggers", json=webhook_trigger(HOOK), headers=admin)
        assert created.status_code == 201, created.text
        t = created.json()
        url = f"/v1/triggers/{t['id']}"

        changed = webhook_trigger(HOOK, condition="facts.purchases_total >= 2")
        updated = await client.put(url, json=changed, headers={**admin, "If-Match": '"1"'})
        assert updated.status_code == 200, updated.text
        assert updated.json()["version"] == 2
        assert updated.json()["secret"] is None  # the old secret is kept, not re-shown
        stale = await client.put(url, json=changed, headers={**admin, "If-Match": '"1"'})
        assert stale.status_code == 412

        assert (await client.post(f"{url}/disable", headers=admin)).json()["enabled"] is False
        assert (await client.post(f"{url}/enable", headers=admin)).json()["version"] == 4
        listed = (await client.get("/v1/triggers", headers=reader)).json()
        assert t["id"] in [x["id"] for x in listed]
        assert (await client.delete(url, headers=admin)).status_code == 204
        assert (await client.get(url, headers=reader)).status_code == 404

        versions = (await client.get(f"{url}/versions", headers=reader)).json()
        assert [(v["version"], v["change"], v["enabled"]) for v in versions] == [
            (1, "created", True),
            (2, "updated", True),
            (3, "disabled", False),
            (4, "enabled", True),
            (5, "deleted", False),
        ]
        assert {v["changed_by"] for v in versions} == {t["updated_by"]}
        assert t["updated_by"].startswith("key_")
        assert versions[1]["definition"]["condition"] == "facts.purchases_total >= 2"
        assert all(v["definition"]["action"]["secret"] == "whsec_********" for v in versions)


async def test_invalid_triggers_are_refused_naming_the_field(
    migrated: str, bootstrap_servers: str, admin_key: str
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        admin = bearer(admin_key)

        async def post(**changes: Any) -> Any:
            body = webhook_trigger(HOOK)
            for key, value in changes.items():
                if key.startswith("action_"):
                    body["action"][key.removeprefix("action_")] = value
                else:
                    body[key] = value
            return await client.post("/v1/triggers", json=body, headers=admin)

        unknown_stage = _errors(await post(on={"kind": "transition", "to_stage": "zombie"}))
        assert "to_stage" in unknown_stage and "zombie" in unknown_stage
        unknown_from = _errors(
            await post(on={"kind": "transition", "from_stages": ["gone"], "to_stage": "active"})
        )
        assert "from_stages" in unknown_from
        assert "bogus_fact" in _errors(await post(condition="facts.bogus_fact > 1"))
        assert "does not compile" in _errors(await post(condition="facts.purchases_total >"))
        assert "sms" in _errors(await post(action={"channel": "sms", "payload": "x"}))
        assert "nope" in _errors(await post(action_payload="{{ nope.x }}"))
        assert "event_type" in _errors(await post(on={"kind": "event", "event_type": "x.y"}))
        assert "colour" in _errors(await post(colour="red"))

        escape = _errors(await post(action_payload="{{ customer.__class__.__mro__ }}"))
        assert "Python internals" in escape
        filtered = _errors(await post(action_payload="{{ customer|attr('__globals__') }}"))
        assert "Python internals" in filtered

        for url in (
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/x",
            "http://169.254.169.254/latest",
            "http://[::1]/x",
            "http://localhost:8080/x",
        ):
            refused = await post(action_url=url)
            assert refused.status_code == 422, url
            assert "refused" in _errors(refused)
        listed = (await client.get("/v1/triggers", headers=admin)).json()
        assert all(t["definition"]["action"].get("url") != "http://10.1.2.3/x" for t in listed)


async def test_trigger_changes_need_an_admin_key_and_reads_a_read_key(
    migrated: str, bootstrap_servers: str, read_key: str
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        body = webhook_trigger(HOOK)
        assert (await client.post("/v1/triggers", json=body)).status_code == 401
        assert (
            await client.post("/v1/triggers", json=body, headers=bearer(read_key))
        ).status_code == 403
        assert (await client.get("/v1/actions", headers=bearer(read_key))).status_code == 200
        assert (await client.get("/v1/actions")).status_code == 401
        bad = await client.get("/v1/actions", params={"status": "lost"}, headers=bearer(read_key))
        assert bad.status_code == 422


async def test_a_draft_is_validated_and_previewed_without_being_stored(
    migrated: str, bootstrap_servers: str, admin_key: str, read_key: str, engine: Any
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        admin = bearer(admin_key)
        before = len((await client.get("/v1/triggers", headers=admin)).json())

        good = await client.post("/v1/triggers/validate", json=webhook_trigger(HOOK), headers=admin)
        assert good.json() == {"valid": True, "errors": []}
        bad = webhook_trigger(HOOK, condition="facts.visits > 1")
        bad["action"]["url"] = "http://10.0.0.1/x"
        answer = (await client.post("/v1/triggers/validate", json=bad, headers=admin)).json()
        assert answer["valid"] is False
        assert [e["path"] for e in answer["errors"]] == ["condition"]
        assert "visits" in answer["errors"][0]["reason"]
        bad["condition"] = "true"
        answer = (await client.post("/v1/triggers/validate", json=bad, headers=admin)).json()
        assert [e["path"] for e in answer["errors"]] == ["action.url"]
        denied = await client.post("/v1/triggers/validate", json=bad, headers=bearer(read_key))
        assert denied.status_code == 403

        customer = "draft-preview-customer"
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO campaigns.customers (customer_id, stage, traits) "
                    'VALUES (:c, \'active\', \'{"name": "Ada", "email": "Ada@Example.com"}\') '
                    "ON CONFLICT DO NOTHING"
                ),
                {"c": customer},
            )
        draft = webhook_trigger(HOOK)
        draft["action"]["payload"] = '{"hello": {{ customer.traits.name | tojson }}}'
        shown = await client.post(
            "/v1/triggers/preview",
            json={"definition": draft, "customer_id": customer},
            headers=admin,
        )
        assert shown.status_code == 200, shown.text
        assert shown.json()["trigger_id"] is None
        assert shown.json()["payload_json"] == {"hello": "Ada"}
        broken = {**draft, "action": {**draft["action"], "payload": "{{ nope.x }}"}}
        refused = await client.post(
            "/v1/triggers/preview",
            json={"definition": broken, "customer_id": customer},
            headers=admin,
        )
        assert refused.status_code == 422
        after = len((await client.get("/v1/triggers", headers=admin)).json())
        assert after == before  # nothing was stored

        # The console's search finds the customer by email, whatever the case.
        found = await client.get(
            "/v1/customers", params={"email": "ada@example.COM"}, headers=bearer(read_key)
        )
        assert found.status_code == 200
        assert [(c["customer_id"], c["stage"], c["name"]) for c in found.json()["customers"]] == [
            (customer, "active", "Ada")
        ]


async def test_a_nul_character_is_refused_with_422_not_a_server_error(
    migrated: str, bootstrap_servers: str, admin_key: str
) -> None:
    # PostgreSQL cannot hold U+0000: in a query or a trigger it used to fail with a 500.
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        admin = bearer(admin_key)
        in_query = await client.get("/v1/actions?customer_id=a%00b", headers=admin)
        assert in_query.status_code == 422 and "NUL" in in_query.text
        body = webhook_trigger(HOOK, description="a\u0000b")
        in_body = await client.post("/v1/triggers", json=body, headers=admin)
        assert in_body.status_code == 422 and "description" in in_body.text


async def test_actions_are_listed_page_by_page_to_the_end(
    migrated: str, bootstrap_servers: str, read_key: str, engine: Any
) -> None:
    customer = f"pager-{uuid.uuid4().hex[:8]}"
    moment = datetime(2026, 1, 5, 9, tzinfo=UTC)
    # Seven actions, three of them created at the same instant: pages must not skip or
    # repeat rows that tie on time.
    async with engine.begin() as conn:
        for n in range(7):
            created = moment + timedelta(minutes=n if n < 4 else 10)
            await conn.execute(
                sa.text(
                    "INSERT INTO campaigns.actions (id, trigger_id, trigger_version, "
                    "customer_id, channel, status, target, cause_event, cause_time, "
                    "created_at, due_at, conversion_window_seconds) VALUES (:id, 'trg', 1, "
                    ":customer, 'webhook', 'delivered', '{}', 'ev', :at, :at, :at, 86400)"
                ),
                {"id": f"act-{customer}-{n}", "customer": customer, "at": created},
            )
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        reader = bearer(read_key)
        everything = await client.get(
            "/v1/actions", params={"customer_id": customer}, headers=reader
        )
        assert "link" not in everything.headers  # one page holds them all
        seen: list[str] = []
        url: str | None = f"/v1/actions?customer_id={customer}&limit=2"
        while url is not None:
            page = await client.get(url, headers=reader)
            assert page.status_code == 200
            seen += [a["id"] for a in page.json()]
            link = page.headers.get("link")
            url = link[1 : link.index(">")] if link else None
        assert seen == [a["id"] for a in everything.json()] and len(seen) == 7
        bad = await client.get("/v1/actions", params={"cursor": "nonsense"}, headers=reader)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]
