"""An anonymous visitor merged into the customer they turned out to be
(`lifecycle.customers_merged`, as the stage engine publishes it): the visitor's traits fill
the customer's gaps, what the visitor was sent counts for the customer (no second
welcome), the visitor's pending actions of transitions are retracted, not sent, and a
replayed merge, or one that arrives after the retractions, changes nothing more. Against
the real broker and database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
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

from clm_events.envelope import encode_structured, new_event


@pytest.fixture
async def service(
    migrated: str, bootstrap_servers: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as pair:
        yield pair


def merged(customer: str, anonymous_id: str, event_id: str | None = None) -> bytes:
    return encode_structured(
        new_event(
            "lifecycle.customers_merged",
            id=event_id or f"merge-{uuid.uuid4().hex}",
            source="clm/stage-engine",
            subject=customer,
            data={"anonymous_id": anonymous_id},
        )
    )


def _tid() -> str:
    return f"tr-{uuid.uuid4().hex}"


async def _welcome(client: httpx.AsyncClient, admin_key: str, url: str, **extra: Any) -> str:
    body = webhook_trigger(url, "onboarding", reentry={"mode": "once"}, **extra)
    created = await client.post("/v1/triggers", json=body, headers=bearer(admin_key))
    assert created.status_code == 201, created.text
    trigger_id: str = created.json()["id"]
    return trigger_id


async def _final(
    client: httpx.AsyncClient, key: str, trigger: str, count: int
) -> list[tuple[str, str, str | None]]:
    """(customer, status, reason) of the trigger's actions, once `count` are final."""

    async def done() -> list[dict[str, Any]] | None:
        rows = await actions(client, key, trigger_id=trigger)
        final = [r for r in rows if r["status"] not in ("pending", "sending")]
        return rows if len(final) >= count else None

    rows = await eventually(done, what=f"{count} final actions")
    return sorted((r["customer_id"], r["status"], r["suppressed_reason"]) for r in rows)


async def _traits(engine: AsyncEngine, customer: str) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(
            sa.text("SELECT traits FROM campaigns.customers WHERE customer_id = :c"),
            {"c": customer},
        )


async def test_a_visitor_welcomed_anonymously_is_not_welcomed_again_and_a_replay_changes_nothing(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    admin_key: str,
    read_key: str,
) -> None:
    client, rt = service
    trigger = await _welcome(client, admin_key, receiver.url)
    ada, visitor, first = cid(), f"anon-{uuid.uuid4().hex[:10]}", _tid()
    web = rt.topics.domain("web.identified")
    await publish(bootstrap_servers, web, ada, event(ada, "web.identified", {"traits": {
        "email": "ada@example.com"}}))  # fmt: skip
    await publish(bootstrap_servers, web, visitor, event(visitor, "web.identified", {"traits": {
        "email": "old@example.com", "locale": "de-DE"}}))  # fmt: skip
    await projected(engine, ada)
    await projected(engine, visitor)
    topic = rt.topics.transitions
    await publish(
        bootstrap_servers,
        topic,
        visitor,
        transition(visitor, "onboarding", None, event_id=first, entry=1),
    )
    assert await _final(client, read_key, trigger, 1) == [(visitor, "delivered", None)]

    # The stage engine: the merge and the customer's rebuilt transition under the
    # customer, the visitor's transition retracted under the visitor.
    merge_id = f"merge-{uuid.uuid4().hex}"
    await publish(
        bootstrap_servers,
        topic,
        ada,
        merged(ada, visitor, merge_id),
        transition(ada, "onboarding", None, event_id=_tid(), entry=1),
    )
    await publish(bootstrap_servers, topic, visitor, retraction(visitor, first, "onboarding", None))
    outcomes = await _final(client, read_key, trigger, 2)
    assert outcomes == [(ada, "delivered", None), (ada, "suppressed", "duplicate_entry")]
    await projected(engine, ada, "traits->>'locale' = 'de-DE'")
    assert await _traits(engine, ada) == {"email": "ada@example.com", "locale": "de-DE"}
    # Gone, or empty again (the visitor's retraction came after the merge).
    assert not await _traits(engine, visitor)

    # The same merge again, and announced again under a new id: nothing changes.
    await publish(
        bootstrap_servers, topic, ada, merged(ada, visitor, merge_id), merged(ada, visitor)
    )
    marker = cid()  # consumed after the replays (one partition per key, so wait on a marker)
    await publish(
        bootstrap_servers, topic, ada, transition(ada, "onboarding", None, event_id=_tid(), entry=1)
    )
    await publish(bootstrap_servers, web, marker, event(marker, "web.identified", {"traits": {}}))
    await projected(engine, marker)
    outcomes = await _final(client, read_key, trigger, 3)
    assert outcomes == [
        (ada, "delivered", None),
        (ada, "suppressed", "duplicate_entry"),
        (ada, "suppressed", "duplicate_entry"),
    ]
    assert await _traits(engine, ada) == {"email": "ada@example.com", "locale": "de-DE"}
    assert len(receiver.received) == 1
    metrics = (await client.get("/metrics")).text
    assert "clm_campaigns_identity_merges_total" in metrics


async def test_a_visitors_pending_welcome_is_retracted_whether_the_merge_comes_before_or_after(
    service: tuple[httpx.AsyncClient, Any],
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    """The visitor's welcome is still waiting (a delay) when the visitor turns out to be a
    customer: it is suppressed as retracted, and the customer's own welcome goes out once,
    whether the merge notice comes before the visitor's retraction (Ada) or after (Bob)."""
    client, rt = service
    trigger = await _welcome(client, admin_key, receiver.url, delay_seconds=2)
    topic = rt.topics.transitions
    ada, bob = cid(), cid()
    anon_ada, anon_bob = f"anon-{uuid.uuid4().hex[:10]}", f"anon-{uuid.uuid4().hex[:10]}"
    firsts = {anon_ada: _tid(), anon_bob: _tid()}
    for visitor, tid in firsts.items():
        await publish(
            bootstrap_servers,
            topic,
            visitor,
            transition(visitor, "onboarding", None, event_id=tid, entry=1),
        )
    await eventually(
        lambda: actions(client, read_key, trigger_id=trigger),
        what="the visitors' pending welcomes",
    )

    def retract(visitor: str) -> bytes:
        return retraction(visitor, firsts[visitor], "onboarding", None)

    def rebuilt(customer: str) -> bytes:
        return transition(customer, "onboarding", None, event_id=_tid(), entry=1)

    await publish(bootstrap_servers, topic, ada, merged(ada, anon_ada), rebuilt(ada))
    await publish(bootstrap_servers, topic, anon_bob, retract(anon_bob))

    async def bob_retracted() -> bool:
        rows = await actions(client, read_key, customer_id=anon_bob)
        return [r["suppressed_reason"] for r in rows] == ["retracted"]

    await eventually(bob_retracted, what="the retraction of Bob's anonymous welcome")
    await publish(bootstrap_servers, topic, bob, merged(bob, anon_bob), rebuilt(bob))
    await publish(bootstrap_servers, topic, anon_ada, retract(anon_ada))

    outcomes = await _final(client, read_key, trigger, 4)
    assert outcomes == sorted(
        [
            (ada, "delivered", None),
            (ada, "suppressed", "retracted"),
            (bob, "delivered", None),
            (bob, "suppressed", "retracted"),
        ]
    )
    received = sorted(r.json()["customer"] for r in receiver.received)
    assert received == sorted([ada, bob])
