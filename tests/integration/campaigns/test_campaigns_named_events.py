"""A trigger on a named web event ("Product Viewed") fires on the name and properties a
marketer wrote in its condition, and its template reads them; a condition reading a name
on a trigger whose events have none is refused naming the field."""

from __future__ import annotations

from campaignkit import ALLOW_LOCAL, WebhookReceiver, actions, cid, event, eventually, publish
from kit import bearer, running


async def test_product_views_of_shoes_fire_and_one_of_a_hat_does_not(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        body = {
            "name": "shoe viewers",
            "on": {"kind": "event", "event_type": "web.tracked"},
            "condition": 'event.name == "Product Viewed" && event.properties.category == "shoes"',
            "action": {
                "channel": "webhook",
                "url": receiver.url,
                "payload": '{"customer": {{ customer.id | tojson }}, '
                '"viewed": {{ event.name | tojson }}, "sku": {{ event.properties.sku | tojson }}}',
            },
        }
        created = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
        assert created.status_code == 201, created.text
        trigger = created.json()["id"]

        # Ada views shoes; Bob views a hat, then shoes (one partition: in that order, so
        # his hat was judged before his shoes fired).
        ada, bob = cid(), cid()
        views = [(ada, "shoes", "b-1"), (bob, "hats", "h-1"), (bob, "shoes", "b-2")]
        for customer, category, sku in views:
            viewed = {"name": "Product Viewed", "properties": {"category": category, "sku": sku}}
            await publish(
                bootstrap_servers,
                rt.topics.domain("web.tracked"),
                customer,
                event(customer, "web.tracked", viewed, source="segment"),
            )

        async def delivered() -> list[dict[str, object]] | None:
            rows = await actions(client, read_key, trigger_id=trigger)
            done = [r for r in rows if r["status"] == "delivered"]
            return done if len(done) >= 2 else None

        rows = await eventually(delivered, what="the shoe viewers' webhooks")
        assert sorted(str(r["customer_id"]) for r in rows) == sorted([ada, bob])
        mine = [r.json() for r in receiver.received if r.json()["customer"] in (ada, bob)]
        assert sorted(mine, key=lambda m: m["sku"]) == [
            {"customer": ada, "viewed": "Product Viewed", "sku": "b-1"},
            {"customer": bob, "viewed": "Product Viewed", "sku": "b-2"},
        ]

        body["on"] = {"kind": "event", "event_type": "purchase.completed"}
        refused = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
        assert refused.status_code == 422
        assert "event.name" in refused.text and "condition" in refused.text, refused.text


async def test_a_condition_reading_a_field_web_tracked_events_lack_is_refused_naming_it(
    migrated: str, bootstrap_servers: str, admin_key: str
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _rt):
        before = (await client.get("/v1/triggers", headers=bearer(admin_key))).json()
        body = {
            "name": "misspelt",
            "on": {"kind": "event", "event_type": "web.tracked"},
            "condition": 'event.propertys.category == "shoes"',
            "action": {"channel": "kafka", "topic": "t", "payload": "{{ customer.id }}"},
        }
        refused = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
        assert refused.status_code == 422
        assert "condition" in refused.text and "propertys" in refused.text, refused.text
        after = (await client.get("/v1/triggers", headers=bearer(admin_key))).json()
        assert after == before
