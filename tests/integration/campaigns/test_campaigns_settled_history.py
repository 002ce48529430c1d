"""Actions follow the settled history: a retracted transition's pending action is not
sent, a rewritten-and-recreated transition is the same customer entry, stale and
backfilled transitions send nothing unless asked, and at send time the trigger's exit
criteria are checked again. Against the real broker and database, transitions published
as the stage engine publishes them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from campaignkit import (
    ALLOW_LOCAL,
    WebhookReceiver,
    actions,
    cid,
    event,
    eventually,
    projected,
    publish,
    retraction,
    transition,
    webhook_trigger,
)
from kit import bearer, running
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture
async def service(
    migrated: str, bootstrap_servers: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The campaigns service, allowed to call the local receiver."""
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as pair:
        yield pair


def _tid() -> str:
    return f"tr-{uuid.uuid4().hex}"


async def _create(client: httpx.AsyncClient, admin_key: str, body: dict[str, Any]) -> str:
    created = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
    assert created.status_code == 201, created.text
    trigger_id: str = created.json()["id"]
    return trigger_id


async def _settled(
    client: httpx.AsyncClient, key: str, customer: str, count: int
) -> list[dict[str, Any]]:
    """The customer's actions, oldest first, once `count` of them have a final status."""

    async def done() -> list[dict[str, Any]] | None:
        rows = await actions(client, key, customer_id=customer)
        final = [r for r in rows if r["status"] not in ("pending", "sending")]
        return sorted(rows, key=lambda r: r["created_at"]) if len(final) >= count else None

    found: list[dict[str, Any]] = await eventually(done, what=f"{count} final actions")
    return found


def _outcomes(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["status"], r["suppressed_reason"]) for r in rows]


async def test_a_pending_action_of_a_retracted_transition_is_suppressed_and_its_replacement_sent(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    await _create(client, admin_key, webhook_trigger(receiver.url, delay_seconds=2))
    ada, first, second = cid(), _tid(), _tid()
    topic = rt.topics.transitions
    await publish(
        bootstrap_servers, topic, ada, transition(ada, "at_risk", event_id=first, entry=1)
    )
    await eventually(lambda: actions(client, read_key, customer_id=ada), what="an action")
    # A late event moved the lapse: the first transition is retracted, then replaced.
    await publish(
        bootstrap_servers,
        topic,
        ada,
        retraction(ada, first, "at_risk"),
        transition(ada, "at_risk", event_id=second, entry=1),
    )
    rows = await _settled(client, read_key, ada, 2)
    assert _outcomes(rows) == [("suppressed", "retracted"), ("delivered", None)]
    assert [r["cause_event"] for r in rows] == [f"clm/stage-engine/{t}" for t in (first, second)]
    assert [r.headers["webhook-id"] for r in receiver.received] == [rows[1]["id"]]


async def test_a_transition_rewritten_after_its_action_went_out_is_the_same_entry(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    """One lapse, however often a late event rewrites it, gives one message; the next
    lapse (entry 2) is a new entry and gets its own."""
    client, rt = service
    await _create(client, admin_key, webhook_trigger(receiver.url))
    ada, first, second, later = cid(), _tid(), _tid(), _tid()
    topic = rt.topics.transitions
    await publish(
        bootstrap_servers, topic, ada, transition(ada, "at_risk", event_id=first, entry=1)
    )
    await _settled(client, read_key, ada, 1)
    await publish(
        bootstrap_servers,
        topic,
        ada,
        retraction(ada, first, "at_risk"),
        transition(ada, "at_risk", event_id=second, entry=1),
        transition(ada, "active", "at_risk", event_id=_tid(), entry=1),
        transition(ada, "at_risk", event_id=later, entry=2),
    )
    rows = await _settled(client, read_key, ada, 3)
    assert sorted((r["entry_key"], r["status"], r["suppressed_reason"]) for r in rows) == [
        ("at_risk#1", "delivered", None),
        ("at_risk#1", "suppressed", "duplicate_entry"),
        ("at_risk#2", "delivered", None),
    ]
    assert len(receiver.received) == 2


async def test_reentry_once_acts_on_the_first_entry_only(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    body = webhook_trigger(receiver.url, "onboarding", reentry={"mode": "once"})
    await _create(client, admin_key, body)
    ada = cid()
    for entry in (1, 2):
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            ada,
            transition(ada, "onboarding", None, event_id=_tid(), entry=entry),
        )
    rows = await _settled(client, read_key, ada, 2)
    rows.sort(key=lambda r: r["entry_key"])
    assert _outcomes(rows) == [("delivered", None), ("suppressed", "reentry")]


async def test_stale_and_backfilled_transitions_send_nothing_unless_asked(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    lapsed = await _create(client, admin_key, webhook_trigger(receiver.url, "lapsed"))
    unlimited = webhook_trigger(receiver.url, "won_back", max_age_seconds=None)
    await _create(client, admin_key, unlimited)
    ada = cid()
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    await publish(
        bootstrap_servers,
        rt.topics.transitions,
        ada,
        transition(ada, "lapsed", at=two_days_ago, event_id=_tid(), entry=1),
        transition(ada, "won_back", "lapsed", at=two_days_ago, event_id=_tid(), entry=1),
        transition(ada, "lapsed", "won_back", event_id=_tid(), entry=2, origin="backfill"),
        transition(
            ada,
            "lapsed",
            "won_back",
            event_id=_tid(),
            entry=3,
            origin="backfill",
            send_actions=True,
        ),
    )
    rows = await _settled(client, read_key, ada, 4)
    stats = await client.get(f"/v1/triggers/{lapsed}/stats", headers=bearer(read_key))
    by_stage = {(r["entry_key"], r["status"], r["suppressed_reason"]) for r in rows}
    assert by_stage == {
        ("lapsed#1", "suppressed", "stale"),
        ("won_back#1", "delivered", None),  # no maximum age on this trigger
        ("lapsed#2", "suppressed", "backfill"),
        ("lapsed#3", "delivered", None),  # the backfill was asked to send
    }
    assert stats.json()["suppressed"]["by_reason"] == {"stale": 1, "backfill": 1}, stats.json()


async def test_at_send_time_the_condition_and_the_stage_are_checked_again(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    """A delayed action goes out only if, by then, its condition still holds on the
    customer's current state (and, when the trigger asks, they are still in its stage)."""
    client, rt = service
    rich = webhook_trigger(receiver.url, condition="facts.revenue_total > 100.0", delay_seconds=2)
    await _create(client, admin_key, rich)
    staying = webhook_trigger(receiver.url, "loyal", delay_seconds=2, recheck={"stage": True})
    await _create(client, admin_key, staying)
    kept = webhook_trigger(receiver.url, "loyal", delay_seconds=2)
    await _create(client, admin_key, kept)
    ada, bob = cid(), cid()
    topic = rt.topics.transitions
    await publish(
        bootstrap_servers,
        topic,
        ada,
        transition(ada, "at_risk", facts={"revenue_total": 150.0}, event_id=_tid(), entry=1),
        # A refund arrives before the delay is over: revenue is now below 100.
        transition(ada, "active", "at_risk", facts={"revenue_total": 40.0}, event_id=_tid()),
    )
    await publish(
        bootstrap_servers,
        topic,
        bob,
        transition(bob, "loyal", event_id=_tid(), entry=1),
        transition(bob, "at_risk", "loyal", event_id=_tid(), entry=1),
    )
    ada_rows = await _settled(client, read_key, ada, 1)
    bob_rows = await _settled(client, read_key, bob, 2)
    assert _outcomes(ada_rows) == [("suppressed", "condition_no_longer_holds")]
    assert sorted(_outcomes(bob_rows), key=str) == [
        ("delivered", None),  # the trigger that does not recheck the stage
        ("suppressed", "left_stage"),
    ]


async def test_a_disabled_trigger_sends_none_of_its_pending_actions(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    trigger = await _create(client, admin_key, webhook_trigger(receiver.url, delay_seconds=2))
    ada = cid()
    await publish(
        bootstrap_servers, rt.topics.transitions, ada, transition(ada, "at_risk", entry=1)
    )
    await eventually(lambda: actions(client, read_key, customer_id=ada), what="an action")
    off = await client.post(f"/v1/triggers/{trigger}/disable", headers=bearer(admin_key))
    assert off.status_code == 200, off.text
    rows = await _settled(client, read_key, ada, 1)
    assert _outcomes(rows) == [("suppressed", "trigger_disabled")]
    assert receiver.received == []


async def test_clv_is_a_number_in_conditions_and_a_score_trigger_on_clv_fires(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    for condition in ("facts.clv > 100.0", "scores.clv > 100.0"):
        await _create(client, admin_key, webhook_trigger(receiver.url, condition=condition))
    valuable = webhook_trigger(receiver.url)
    valuable["on"] = {"kind": "score", "score": "clv", "threshold": 1000, "direction": "above"}
    await _create(client, admin_key, valuable)
    ada = cid()
    score = {
        "clv": "1822.00",  # money travels as a decimal string
        "churn_probability": 0.7,
        "p_alive": 0.3,
        "expected_purchases": 0.4,
        "model": "bgnbd",
    }
    await publish(
        bootstrap_servers,
        rt.topics.scores,
        ada,
        event(ada, "lifecycle.score_updated", score, source="clm/scoring"),
    )
    await projected(engine, ada, "scores->>'clv' = '1822.00'")
    await publish(
        bootstrap_servers, rt.topics.transitions, ada, transition(ada, "at_risk", entry=1)
    )
    rows = await _settled(client, read_key, ada, 3)
    assert _outcomes(rows) == [("delivered", None)] * 3


async def test_templates_render_missing_values_empty_or_suppress_naming_the_path(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    payload = '{"email": {{ customer.traits.email | tojson }}}'
    client, rt = service
    lenient = webhook_trigger(receiver.url)
    lenient["action"]["payload"] = payload
    trigger = await _create(client, admin_key, lenient)
    strict = webhook_trigger(receiver.url, missing_variables="suppress")
    strict["action"]["payload"] = payload
    await _create(client, admin_key, strict)
    ada = cid()
    await publish(
        bootstrap_servers, rt.topics.transitions, ada, transition(ada, "at_risk", entry=1)
    )
    rows = await _settled(client, read_key, ada, 2)
    preview = await client.post(
        f"/v1/triggers/{trigger}/preview", json={"customer_id": ada}, headers=bearer(admin_key)
    )
    assert sorted(_outcomes(rows), key=str) == [
        ("delivered", None),
        ("suppressed", "missing_variable"),
    ]
    [suppressed] = [r for r in rows if r["status"] == "suppressed"]
    assert "customer.traits.email" in suppressed["last_error"]
    assert [r.json() for r in receiver.received] == [{"email": None}]
    assert preview.status_code == 200, preview.text
    assert preview.json()["missing"] == ["customer.traits.email"]


async def test_conditions_and_templates_that_can_never_work_are_refused_when_saved(
    service: tuple[httpx.AsyncClient, Any], admin_key: str
) -> None:
    client, _ = service
    never = webhook_trigger("https://example.com/hook", condition='facts.clv > "100"')
    refused = await client.post("/v1/triggers", json=never, headers=bearer(admin_key))
    slow = webhook_trigger("https://example.com/hook")
    slow["action"]["payload"] = (
        "{% for i in range(10000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}"
    )
    too_slow = await client.post("/v1/triggers", json=slow, headers=bearer(admin_key))
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"][-1] == "condition" and "facts.clv" in error["msg"]
    assert too_slow.status_code == 422
    [error] = too_slow.json()["detail"]
    # Refused by the loop-size limit, or by the time limit when it comes first.
    assert error["loc"][-1] == "payload"
    assert "100000" in error["msg"] or "time limit" in error["msg"], error["msg"]


async def test_suppressed_actions_are_counted_by_reason_while_waiting_for_their_delay(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    """A retraction that arrives while the action waits for quiet hours or a delay is
    counted in the trigger's stats, with the deferral it was waiting for."""
    client, rt = service
    trigger = await _create(client, admin_key, webhook_trigger(receiver.url, delay_seconds=60))
    ada, first = cid(), _tid()
    topic = rt.topics.transitions
    await publish(
        bootstrap_servers, topic, ada, transition(ada, "at_risk", event_id=first, entry=1)
    )
    await eventually(lambda: actions(client, read_key, customer_id=ada), what="an action")
    await publish(bootstrap_servers, topic, ada, retraction(ada, first, "at_risk"))
    rows = await _settled(client, read_key, ada, 1)
    await asyncio.sleep(0)
    stats = (await client.get(f"/v1/triggers/{trigger}/stats", headers=bearer(read_key))).json()
    assert _outcomes(rows) == [("suppressed", "retracted")]
    assert rows[0]["deferred_reason"] == "delay"
    assert stats["suppressed"] == {"total": 1, "by_reason": {"retracted": 1}}


async def test_customers_already_in_the_stage_are_enrolled_once_on_request(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    ada, bob = cid(), cid()
    for customer in (ada, bob):
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            customer,
            transition(customer, "won_back", "lapsed", event_id=_tid(), entry=1),
        )
        await projected(engine, customer, "stage = 'won_back'")
    trigger = await _create(client, admin_key, webhook_trigger(receiver.url, "won_back"))
    assert await actions(client, read_key, trigger_id=trigger) == []  # not retroactive

    pages, after = [], ""
    while True:
        page = await client.post(
            f"/v1/triggers/{trigger}/enroll",
            params={"after": after, "limit": 1},
            headers=bearer(admin_key),
        )
        assert page.status_code == 200, page.text
        pages.append(page.json())
        if page.json()["next"] is None:
            break
        after = page.json()["next"]
    again = await client.post(f"/v1/triggers/{trigger}/enroll", headers=bearer(admin_key))
    mine = [await _settled(client, read_key, c, 2) for c in (ada, bob)]
    event_trigger = webhook_trigger(receiver.url)
    event_trigger["on"] = {"kind": "event", "event_type": "purchase.completed"}
    other = await _create(client, admin_key, event_trigger)
    refused = await client.post(f"/v1/triggers/{other}/enroll", headers=bearer(admin_key))
    ours = {ada, bob}
    enrolled = sum(p["enrolled"] for p in pages)
    assert enrolled >= 2  # ours, and any other won_back customer of the shared database
    assert again.json()["suppressed"].get("duplicate_entry", 0) >= 2
    for rows in mine:
        assert _outcomes(rows) == [("delivered", None), ("suppressed", "duplicate_entry")]
        assert {r["entry_key"] for r in rows} == {"won_back#1"}
    assert len([r for r in receiver.received if r.json()["customer"] in ours]) == 2
    assert refused.status_code == 422
