"""Delivery survives crashes, retries with backoff and then fails, and reaches SMTP and
Kafka as well as webhooks."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from typing import Any

import pytest
from campaignkit import (
    ALLOW_LOCAL,
    WebhookReceiver,
    actions,
    cid,
    event,
    eventually,
    publish,
    transition,
    webhook_trigger,
)
from kit import bearer, read_topic, running

from clm_campaigns.dispatcher import Dispatcher


class Crash(BaseException):
    """The process dying (not an error anything may catch)."""


async def test_a_crash_after_sending_before_recording_redelivers_the_same_action_once(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = {"dispatch_lease_seconds": 1.0, **ALLOW_LOCAL}
    customer = cid()

    async def die(self: Dispatcher, results: Any) -> None:
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(Dispatcher, "record", die)
        async with running("clm_campaigns", migrated, bootstrap_servers, **settings) as (
            client,
            rt,
        ):
            r = await client.post(
                "/v1/triggers", json=webhook_trigger(receiver.url), headers=bearer(admin_key)
            )
            trigger = r.json()
            await publish(
                bootstrap_servers, rt.topics.transitions, customer, transition(customer, "at_risk")
            )
            await eventually(lambda: asyncio.sleep(0, receiver.received), what="the first send")
            (recorded,) = await actions(client, read_key, customer_id=customer)
    assert len(receiver.received) == 1
    assert recorded["status"] == "sending"  # sent, but the process died before recording

    async with running("clm_campaigns", migrated, bootstrap_servers, **settings) as (client, _):
        delivered = await eventually(
            lambda: actions(client, read_key, customer_id=customer, status="delivered"),
            what="the re-delivery after the claim lapsed",
        )
    assert len(delivered) == 1
    assert delivered[0]["id"] == recorded["id"]
    assert delivered[0]["attempts"] == 2
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert ids == [recorded["id"], recorded["id"]]  # the receiver can drop the repeat
    assert trigger["id"] == delivered[0]["trigger_id"]


async def test_a_crash_after_recording_before_dispatch_delivers_exactly_once(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    customer = cid()

    async def stalled(self: Dispatcher, limit: int) -> int:
        return 0

    with monkeypatch.context() as patch:
        patch.setattr(Dispatcher, "claim_once", stalled)
        async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
            client,
            rt,
        ):
            r = await client.post(
                "/v1/triggers", json=webhook_trigger(receiver.url), headers=bearer(admin_key)
            )
            assert r.status_code == 201
            await publish(
                bootstrap_servers, rt.topics.transitions, customer, transition(customer, "at_risk")
            )
            pending = await eventually(
                lambda: actions(client, read_key, customer_id=customer), what="the recorded action"
            )
            await asyncio.sleep(0.3)  # the stalled dispatcher would have sent by now
    assert [a["status"] for a in pending] == ["pending"]
    assert receiver.received == []

    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (client, _):
        delivered = await eventually(
            lambda: actions(client, read_key, customer_id=customer, status="delivered"),
            what="delivery after the restart",
        )
        await asyncio.sleep(0.5)  # room for a duplicate to show up
    assert [a["id"] for a in delivered] == [pending[0]["id"]]
    assert [r.headers["webhook-id"] for r in receiver.received] == [pending[0]["id"]]


async def test_a_failing_webhook_is_retried_with_backoff_then_marked_failed(
    migrated: str, bootstrap_servers: str, receiver: WebhookReceiver, admin_key: str, read_key: str
) -> None:
    receiver.statuses = [500, 503, 500]
    settings = {"max_attempts": 3, "retry_base_seconds": 0.05, **ALLOW_LOCAL}
    async with running("clm_campaigns", migrated, bootstrap_servers, **settings) as (client, rt):
        trigger = (
            await client.post(
                "/v1/triggers", json=webhook_trigger(receiver.url), headers=bearer(admin_key)
            )
        ).json()
        customer = cid()
        await publish(
            bootstrap_servers, rt.topics.transitions, customer, transition(customer, "at_risk")
        )
        failed = await eventually(
            lambda: actions(client, read_key, customer_id=customer, status="failed"),
            what="the action to fail for good",
        )
        stats = (
            await client.get(f"/v1/triggers/{trigger['id']}/stats", headers=bearer(read_key))
        ).json()
    assert failed[0]["attempts"] == 3
    assert failed[0]["last_error"] == "HTTP 500"
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {failed[0]["id"]}
    assert (stats["fired"], stats["failed"], stats["delivered"]) == (1, 1, 0)


async def test_email_goes_over_smtp_and_kafka_actions_through_the_outbox(
    migrated: str,
    bootstrap_servers: str,
    smtp_server: tuple[Any, int],
    admin_key: str,
    read_key: str,
) -> None:
    mailbox, port = smtp_server
    async with running(
        "clm_campaigns", migrated, bootstrap_servers, smtp_port=port, email_from="crm@shop.example"
    ) as (client, rt):
        email = {
            "name": "win back mail",
            "on": {"kind": "transition", "to_stage": "lapsed"},
            "action": {
                "channel": "email",
                "to": "{{ customer.facts.email }}",
                "subject": "We miss you, {{ customer.facts.name }}",
                "body": "Come back: {{ customer.facts.revenue_total }} spent so far.",
            },
        }
        kafka = {
            "name": "payment failed to CRM",
            "on": {"kind": "event", "event_type": "billing.payment_failed"},
            "action": {
                "channel": "kafka",
                "topic": rt.topics.prefix + "crm.tasks",
                "payload": '{"task": "call", "customer": "{{ customer.id }}", '
                '"invoice": "{{ event.data.invoice_id }}"}',
            },
        }
        for body in (email, kafka):
            r = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
            assert r.status_code == 201, r.text
        customer = cid()
        facts = {"email": "ada@example.com", "name": "Ada", "revenue_total": 42.5}
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            customer,
            transition(customer, "lapsed", facts=facts),
        )
        await publish(
            bootstrap_servers,
            rt.topics.domain("billing.payment_failed"),
            customer,
            event(
                customer,
                "billing.payment_failed",
                {"invoice_id": "inv-9", "amount": "9.90", "currency": "EUR"},
            ),
        )
        delivered = await eventually(
            lambda: _when(2, actions(client, read_key, customer_id=customer, status="delivered")),
            what="both actions delivered",
        )
        tasks = await read_topic(bootstrap_servers, rt.topics.prefix + "crm.tasks", expect=1)
    assert sorted(a["channel"] for a in delivered) == ["email", "kafka"]
    (envelope,) = mailbox.messages
    assert envelope.rcpt_tos == ["ada@example.com"]
    mail = message_from_bytes(envelope.content)
    assert mail["Subject"] == "We miss you, Ada"
    email_action = next(a for a in delivered if a["channel"] == "email")
    assert mail["X-CLM-Action-Id"] == email_action["id"]
    assert "42.5 spent so far" in mail.get_payload()
    assert [(r.key, r.value) for r in tasks] == [
        (
            customer.encode(),
            f'{{"task": "call", "customer": "{customer}", "invoice": "inv-9"}}'.encode(),
        )
    ]
    kafka_action = next(a for a in delivered if a["channel"] == "kafka")
    assert dict(tasks[0].headers)["clm-action-id"] == kafka_action["id"].encode()


async def _when(n: int, rows: Any) -> Any:
    got = await rows
    return got if len(got) >= n else None
