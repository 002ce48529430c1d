"""A stage transition fires the matching trigger once, personalised and signed."""

from __future__ import annotations

import json

from campaignkit import (
    ALLOW_LOCAL,
    WebhookReceiver,
    actions,
    cid,
    event,
    eventually,
    projected,
    publish,
    transition,
    webhook_trigger,
)
from kit import bearer, read_topic, running
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from clm_events.envelope import decode_kafka_record


async def test_transition_fires_the_matching_trigger_once_personalised_and_signed(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        body = webhook_trigger(
            receiver.url,
            condition="facts.revenue_total > 50.0 && scores.churn_probability >= 0.5",
            on={"kind": "transition", "from_stages": ["active", "loyal"], "to_stage": "at_risk"},
        )
        body["action"]["payload"] = (
            '{"to": {{ customer.traits.email | tojson }}, "hello": "Hi {{ customer.traits.name }}",'
            ' "stage": "{{ customer.stage }}", "churn": {{ customer.scores.churn_probability }},'
            ' "last_order": "{{ customer.recent_purchases[0].order_id }}"}'
        )
        created = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
        assert created.status_code == 201, created.text
        trigger = created.json()
        secret = trigger["secret"]
        assert secret.startswith("whsec_")
        assert trigger["definition"]["action"]["secret"] == "whsec_********"

        ada, bob = cid(), cid()
        for customer, revenue in ((ada, 120.0), (bob, 10.0)):
            await publish(
                bootstrap_servers,
                rt.topics.domain("web.identified"),
                customer,
                event(
                    customer,
                    "web.identified",
                    {"traits": {"email": f"{customer}@example.com", "name": "Ada"}},
                ),
            )
            await publish(
                bootstrap_servers,
                rt.topics.domain("purchase.completed"),
                customer,
                event(
                    customer,
                    "purchase.completed",
                    {"order_id": "o-77", "amount": "60.00", "currency": "EUR"},
                ),
            )
            await publish(
                bootstrap_servers,
                rt.topics.scores,
                customer,
                event(
                    customer,
                    "lifecycle.score_updated",
                    {
                        "clv": "300",
                        "churn_probability": 0.7,
                        "p_alive": 0.3,
                        "expected_purchases": 0.5,
                        "model": "m1",
                    },
                ),
            )
            await projected(
                engine,
                customer,
                "scores ? 'churn_probability' AND traits ? 'name' AND recent_purchases <> '[]'",
            )
            facts = {"revenue_total": revenue, "purchases_total": 3}
            fire = transition(customer, "at_risk", "active", facts=facts, event_id=f"tr-{customer}")
            # A transition from another stage, a transition to another stage, and the
            # same transition delivered twice: none may fire again.
            await publish(
                bootstrap_servers,
                rt.topics.transitions,
                customer,
                fire,
                fire,
                transition(customer, "at_risk", "lapsed", facts=facts),
                transition(customer, "loyal", "active", facts=facts),
            )

        delivered = await eventually(
            lambda: actions(client, read_key, trigger_id=trigger["id"], status="delivered"),
            what="the webhook action to be delivered",
        )
        assert [a["customer_id"] for a in delivered] == [ada]
        assert len(receiver.received) == 1
        hook = receiver.received[0]
        assert hook.headers["webhook-id"] == delivered[0]["id"]
        # Signed per Standard Webhooks with the trigger's secret.
        Webhook(secret).verify(hook.body, hook.headers)
        assert hook.json() == {
            "to": f"{ada}@example.com",
            "hello": "Hi Ada",
            "stage": "at_risk",
            "churn": 0.7,
            "last_order": "o-77",
        }
        assert await actions(client, read_key, customer_id=bob) == []

        announced = await read_topic(bootstrap_servers, rt.topics.actions, expect=1)
        fired = [decode_kafka_record(r.headers, r.value) for r in announced]
        assert [(e.type, e.subject, e.data.model_dump()) for e in fired] == [
            (
                "campaign.action_fired",
                ada,
                {
                    "trigger_id": trigger["id"],
                    "action_id": delivered[0]["id"],
                    "channel": "webhook",
                    "status": "delivered",
                },
            )
        ]
        metrics = (await client.get("/metrics")).text
        series = f'channel="webhook",status="delivered",trigger="{trigger["id"]}"'
        assert f"clm_campaigns_actions_total{{{series}}} 1.0" in metrics
        assert "clm_campaigns_transition_to_delivery_seconds_bucket" in metrics


async def test_preview_renders_for_a_customer_without_sending(
    migrated: str, bootstrap_servers: str, receiver: WebhookReceiver, admin_key: str, read_key: str
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        body = webhook_trigger(receiver.url, to_stage="won_back", condition='stage == "won_back"')
        body["action"]["payload"] = (
            '{"name": "{{ customer.traits.name }}", "tz": "{{ customer.facts.timezone }}"}'
        )
        trigger = (await client.post("/v1/triggers", json=body, headers=bearer(admin_key))).json()
        ada = cid()
        await publish(
            bootstrap_servers,
            rt.topics.domain("web.signed_up"),
            ada,
            event(
                ada,
                "web.signed_up",
                {"email": "a@example.com", "name": "Ada", "traits": {"timezone": "Europe/Berlin"}},
            ),
        )

        async def preview() -> dict[str, object] | None:
            r = await client.post(
                f"/v1/triggers/{trigger['id']}/preview",
                json={"customer_id": ada},
                headers=bearer(admin_key),
            )
            return r.json() if r.status_code == 200 else None

        shown = await eventually(preview, what="the customer to be known")
        assert shown["payload_json"] == {"name": "Ada", "tz": "Europe/Berlin"}
        assert shown["target"]["url"] == receiver.url
        assert shown["condition_matches"] is False  # not won back yet
        assert json.loads(str(shown["payload"])) == shown["payload_json"]

        unknown = await client.post(
            f"/v1/triggers/{trigger['id']}/preview",
            json={"customer_id": "nobody"},
            headers=bearer(admin_key),
        )
        assert unknown.status_code == 404
        assert receiver.received == []
        assert await actions(client, read_key, trigger_id=trigger["id"]) == []
