"""Journeys against the real broker and database, with time moved forward through the
service's own clock control (no sleeping for days)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from campaignkit import (
    ALLOW_LOCAL,
    DAY,
    WebhookReceiver,
    cid,
    event,
    eventually,
    onboarding,
    projected,
    publish,
    transition,
)
from campaignkit import journey_send as send
from kit import bearer, running
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_campaigns.domain.journeys import JourneyDefinition, SplitStep, arm_of

CLOCK = {"clock_control": True, "journey_poll_interval": 0.1, **ALLOW_LOCAL}


async def create(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> str:
    r = await client.post("/v1/journeys", json=body, headers=bearer(key))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def advance(client: httpx.AsyncClient, key: str, seconds: float) -> None:
    r = await client.post("/v1/clock", json={"advance_seconds": seconds}, headers=bearer(key))
    assert r.status_code == 200, r.text


async def runs_of(
    client: httpx.AsyncClient, key: str, customer: str, journey: str
) -> list[dict[str, Any]]:
    """The customer's runs of the journey, as `GET /v1/customers/{id}/journeys` has them."""
    r = await client.get(f"/v1/customers/{customer}/journeys", headers=bearer(key))
    assert r.status_code == 200, r.text
    return list(next(j for j in r.json() if j["journey_id"] == journey)["runs"])


def steps_to(receiver: WebhookReceiver, customer: str) -> list[str]:
    return [r.json()["step"] for r in receiver.received if r.json()["customer"] == customer]


async def test_onboarding_journey_runs_end_to_end_with_the_clock_moved_forward(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    async with running("clm_campaigns", migrated, bootstrap_servers, **CLOCK) as (client, rt):
        journey = await create(client, admin_key, onboarding(receiver.url))
        buyer, idle = cid(), cid()
        for c in (buyer, idle):
            await publish(bootstrap_servers, rt.topics.transitions, c, transition(c, "onboarding"))

        async def welcomed() -> bool:
            return steps_to(receiver, buyer) == ["welcome"] and steps_to(receiver, idle) == [
                "welcome"
            ]

        await eventually(welcomed, what="both welcomes")
        # The buyer's second purchase moves them on, with the stage engine's facts.
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            buyer,
            transition(buyer, "active", "onboarding", facts={"purchases_total": 2}),
        )
        await projected(engine, buyer, "stage = 'active'")
        await advance(client, admin_key, DAY)  # a day in: still waiting
        stats = (await client.get(f"/v1/journeys/{journey}/stats", headers=bearer(read_key))).json()
        assert stats["steps"]["three_days"]["waiting"] == 2
        assert len(receiver.received) == 2

        await advance(client, admin_key, 2 * DAY + 60)

        async def finished() -> bool:
            return steps_to(receiver, buyer) == ["welcome", "thanks"] and steps_to(
                receiver, idle
            ) == ["welcome", "tip"]

        await eventually(finished, what="thanks to the buyer and a tip to the idle customer")

        async def settled() -> dict[str, Any] | None:
            r = await client.get(f"/v1/journeys/{journey}/stats", headers=bearer(read_key))
            body: dict[str, Any] = r.json()
            return body if body["runs"]["by_status"] == {"completed": 2} else None

        stats = await eventually(settled, what="both runs completed")
        assert stats["steps"]["second_purchase"]["outcomes"] == {"then": 1, "else": 1}
        assert stats["steps"]["welcome"]["outcomes"] == {"sent": 2}
        assert stats["steps"]["three_days"]["outcomes"] == {"waited": 2}
        (run,) = await runs_of(client, read_key, buyer, journey)
        assert run["status"] == "completed"
        assert [s["step_id"] for s in run["steps"]] == [
            "welcome",
            "three_days",
            "second_purchase",
            "thanks",
            "done",
        ]


async def test_a_purchase_exits_a_waiting_customer_and_wait_for_takes_the_event_branch(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    body = {
        "name": "at risk",
        "entry": {"on": {"kind": "transition", "to_stage": "at_risk"}},
        "exit": {"events": ["purchase.completed"]},
        "steps": [
            {"id": "week", "type": "wait", "seconds": 7 * DAY},
            send("offer", receiver.url),
        ],
    }
    ticket = {
        "name": "ticket follow-up",
        "entry": {"on": {"kind": "event", "event_type": "support.ticket_opened"}},
        "steps": [
            {
                "id": "resolved",
                "type": "wait_for",
                "event": "support.ticket_resolved",
                "timeout_seconds": 2 * DAY,
                "on_event": "survey",
                "on_timeout": "apology",
            },
            send("apology", receiver.url, next="end"),
            send("survey", receiver.url),
            {"id": "end", "type": "exit"},
        ],
    }
    async with running("clm_campaigns", migrated, bootstrap_servers, **CLOCK) as (client, rt):
        at_risk = await create(client, admin_key, body)
        await create(client, admin_key, ticket)
        buyer, stays, resolved, ignored = cid(), cid(), cid(), cid()
        for c in (buyer, stays):
            await publish(bootstrap_servers, rt.topics.transitions, c, transition(c, "at_risk"))
        support = rt.topics.domain("support.ticket_opened")
        for c in (resolved, ignored):
            data = {"ticket_id": f"t-{c}"}
            await publish(bootstrap_servers, support, c, event(c, "support.ticket_opened", data))

        async def waiting() -> bool:
            r = await client.get(f"/v1/journeys/{at_risk}/stats", headers=bearer(read_key))
            return r.json()["steps"].get("week", {}).get("waiting") == 2

        await eventually(waiting, what="both at-risk customers waiting")
        purchase = {"order_id": f"o-{uuid.uuid4().hex[:6]}", "amount": "20.00", "currency": "EUR"}
        purchases = rt.topics.domain("purchase.completed")
        await publish(
            bootstrap_servers, purchases, buyer, event(buyer, "purchase.completed", purchase)
        )
        await publish(
            bootstrap_servers,
            support,
            resolved,
            event(resolved, "support.ticket_resolved", {"ticket_id": f"t-{resolved}"}),
        )

        async def exited() -> bool:
            runs = await runs_of(client, read_key, buyer, at_risk)
            return bool(runs) and runs[0]["status"] == "exited"

        await eventually(exited, what="the buyer to exit on the purchase")
        await advance(client, admin_key, 8 * DAY)

        async def sent() -> bool:
            return (
                steps_to(receiver, stays) == ["offer"]
                and steps_to(receiver, resolved) == ["survey"]
                and steps_to(receiver, ignored) == ["apology"]
            )

        await eventually(sent, what="the offer, the survey and the apology")
        assert steps_to(receiver, buyer) == []
        (run,) = await runs_of(client, read_key, buyer, at_risk)
        assert run["exit_reason"] == "event:purchase.completed"
        stats = (await client.get(f"/v1/journeys/{at_risk}/stats", headers=bearer(read_key))).json()
        assert stats["runs"]["exited"] == {"event:purchase.completed": 1}
        assert stats["runs"]["converted"] == 1  # the buyer, within the window


async def test_a_split_keeps_a_customers_arm_on_re_entry(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    body = {
        "name": "a/b on lapsed",
        "entry": {"on": {"kind": "transition", "to_stage": "lapsed"}},
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "arms": [
                    {"name": "a", "percent": 45, "next": "offer_a"},
                    {"name": "b", "percent": 45, "next": "offer_b"},
                    {"name": "holdout", "percent": 10, "holdout": True},
                ],
            },
            send("offer_a", receiver.url, next="end"),
            send("offer_b", receiver.url),
            {"id": "end", "type": "exit"},
        ],
    }
    async with running("clm_campaigns", migrated, bootstrap_servers, **CLOCK) as (client, rt):
        journey = await create(client, admin_key, body)
        customers = [cid() for _ in range(12)]
        for entry in (1, 2):  # two stays in lapsed: two entries each
            for c in customers:
                tr = transition(c, "lapsed", "at_risk", transition_id=f"{c}-{entry}", entry=entry)
                await publish(bootstrap_servers, rt.topics.transitions, c, tr)

        async def all_ran() -> list[dict[str, Any]] | None:
            out = []
            for c in customers:
                runs = await runs_of(client, read_key, c, journey)
                if len(runs) != 2 or any(run["status"] == "active" for run in runs):
                    return None
                out.append({"customer": c, "arms": [run["arm"] for run in runs]})
            return out

        arms = await eventually(all_ran, what="two finished runs per customer")
        for row in arms:
            assert row["arms"][0] == row["arms"][1], row
        for c, row in zip(customers, arms, strict=True):
            arm = row["arms"][0]
            assert steps_to(receiver, c) == ([] if arm == "holdout" else [f"offer_{arm}"] * 2)
        stats = (await client.get(f"/v1/journeys/{journey}/stats", headers=bearer(read_key))).json()
        counted = {a["arm"]: a["runs"] for a in stats["splits"]["ab"]}
        assert counted == {arm: 2 * sum(row["arms"][0] == arm for row in arms) for arm in counted}
        assert sum(counted.values()) == 24
        if "holdout" in counted:
            assert stats["runs"]["exited"] == {"holdout": counted["holdout"]}


async def test_why_not_names_the_reason_for_each_customer(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    body = {
        "name": "won back, high value",
        "entry": {
            "on": {"kind": "transition", "to_stage": "won_back"},
            "condition": "facts.purchases_total >= 3",
        },
        "reentry": {"mode": "once"},
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "arms": [
                    {"name": "treated", "percent": 50},
                    {"name": "holdout", "percent": 50, "holdout": True},
                ],
            },
            send("thanks", receiver.url),
        ],
    }
    # A global cap of one webhook a day: a customer who had one today gets none here.
    async with running("clm_campaigns", migrated, bootstrap_servers, global_cap_max=1, **CLOCK) as (
        client,
        rt,
    ):
        journey = await create(client, admin_key, body)
        split = JourneyDefinition.model_validate(body).steps[0]
        assert isinstance(split, SplitStep)

        def in_arm(arm: str) -> str:
            """A customer id the split puts in `arm` (assignment is a hash, so known)."""
            while True:
                c = cid()
                if arm_of(journey, c, split).name == arm:
                    return c

        never, poor = cid(), cid()
        twice, capped, held = in_arm("treated"), in_arm("treated"), in_arm("holdout")
        rich = {"purchases_total": 5}
        await publish(bootstrap_servers, rt.topics.transitions, never, transition(never, "active"))
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            poor,
            transition(poor, "won_back", "lapsed", facts={"purchases_total": 1}),
        )
        for n in (1, 2):
            tr = transition(twice, "won_back", "lapsed", facts=rich, transition_id=f"w{n}", entry=n)
            await publish(bootstrap_servers, rt.topics.transitions, twice, tr)
        # The capped customer had a webhook from a trigger today already.
        r = await client.post(
            "/v1/triggers",
            json={
                "name": "earlier message",
                "on": {"kind": "transition", "to_stage": "lapsed"},
                "action": {
                    "channel": "webhook",
                    "url": receiver.url,
                    "payload": '{"customer": "{{ customer.id }}", "step": "earlier"}',
                },
            },
            headers=bearer(admin_key),
        )
        assert r.status_code == 201, r.text
        await publish(
            bootstrap_servers, rt.topics.transitions, capped, transition(capped, "lapsed")
        )

        async def earlier() -> bool:
            return steps_to(receiver, capped) == ["earlier"]

        await eventually(earlier, what="the earlier message")
        for c in (capped, held):
            tr = transition(c, "won_back", "lapsed", facts=rich)
            await publish(bootstrap_servers, rt.topics.transitions, c, tr)
        await projected(engine, never)

        async def why(customer: str) -> dict[str, Any]:
            r = await client.get(f"/v1/customers/{customer}/journeys", headers=bearer(read_key))
            return dict(next(j for j in r.json() if j["journey_id"] == journey))

        async def decided() -> bool:
            done = [await why(c) for c in (twice, capped, held)]
            return all(d["runs"] and d["runs"][0]["status"] != "active" for d in done) and (
                "not_entered" in await why(poor)
                and (await why(twice)).get("not_entered", {}).get("reason") == "reentry_limit"
            )

        await eventually(decided, what="every customer decided")
        assert (await why(never))["not_entered"]["reason"] == "no_matching_occasion"
        refused = (await why(poor))["not_entered"]
        assert refused["reason"] == "condition_false"
        assert refused["values"]["facts"]["purchases_total"] == 1
        assert (await why(twice))["not_entered"]["reason"] == "reentry_limit"
        (run,) = (await why(capped))["runs"]
        assert [s["outcome"] for s in run["steps"]] == ["arm:treated", "global_cap"]
        (run,) = (await why(held))["runs"]
        assert run["exit_reason"] == "holdout"
        assert steps_to(receiver, held) == []
        assert steps_to(receiver, twice) == ["thanks"]


async def test_an_edited_journey_keeps_its_customers_on_the_version_they_entered_with(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    first = onboarding(receiver.url)
    async with running("clm_campaigns", migrated, bootstrap_servers, **CLOCK) as (client, rt):
        journey = await create(client, admin_key, first)
        early, late = cid(), cid()
        await publish(
            bootstrap_servers, rt.topics.transitions, early, transition(early, "onboarding")
        )

        async def welcomed() -> bool:
            return steps_to(receiver, early) == ["welcome"]

        await eventually(welcomed, what="the first customer's welcome")
        # Version 2 drops the three-day wait the first customer is in, and the branch.
        second = {**first, "steps": [send("welcome", receiver.url), send("tip", receiver.url)]}
        r = await client.put(f"/v1/journeys/{journey}", json=second, headers=bearer(admin_key))
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["in_flight"]) == (2, {"1": 1})
        await publish(
            bootstrap_servers, rt.topics.transitions, late, transition(late, "onboarding")
        )

        async def second_version() -> bool:
            return sorted(steps_to(receiver, late)) == ["tip", "welcome"]  # one pass: any order

        await eventually(second_version, what="version 2 for the second customer")
        assert steps_to(receiver, early) == ["welcome"]  # still waiting on version 1
        await advance(client, admin_key, 3 * DAY + 60)

        async def first_version() -> bool:
            return steps_to(receiver, early) == ["welcome", "tip"]

        await eventually(first_version, what="version 1's wait and branch for the first")
        (run,) = await runs_of(client, read_key, early, journey)
        assert run["journey_version"] == 1
        assert [s["step_id"] for s in run["steps"]] == [
            "welcome",
            "three_days",
            "second_purchase",
            "tip",
            "done",
        ]


@pytest.mark.timeout(240)
async def test_a_split_holds_its_proportions_on_ten_thousand_customers(
    migrated: str, bootstrap_servers: str, admin_key: str, read_key: str
) -> None:
    n = 10_000
    body = {
        "name": "a/b/holdout on ten thousand",
        "entry": {"on": {"kind": "transition", "to_stage": "at_risk"}},
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "arms": [
                    {"name": "a", "percent": 45},
                    {"name": "b", "percent": 45},
                    {"name": "holdout", "percent": 10, "holdout": True},
                ],
            },
        ],
    }
    async with running("clm_campaigns", migrated, bootstrap_servers, **CLOCK) as (client, rt):
        journey = await create(client, admin_key, body)
        run = uuid.uuid4().hex[:6]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            sent = []
            for k in range(n):
                c = f"s{k:05d}-{run}"
                sent.append(
                    await producer.send(
                        rt.topics.transitions, transition(c, "at_risk"), key=c.encode()
                    )
                )
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

        async def split() -> dict[str, int] | None:
            r = await client.get(f"/v1/journeys/{journey}/stats", headers=bearer(read_key))
            arms = {a["arm"]: a["runs"] for a in r.json()["splits"].get("ab", [])}
            return arms if sum(arms.values()) == n else None

        arms = await eventually(split, timeout=180, what="ten thousand runs through the split")
        for name, share in (("a", 0.45), ("b", 0.45), ("holdout", 0.10)):
            sigma = (n * share * (1 - share)) ** 0.5
            assert abs(arms[name] - n * share) < 4 * sigma, arms


async def test_the_global_cap_stops_the_fourth_marketing_message_of_the_week_only(
    migrated: str,
    bootstrap_servers: str,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    weekly = {"webhook": {"max": 3, "period_seconds": 7 * DAY}}
    body = {
        "name": "a busy week",
        "entry": {"on": {"kind": "transition", "to_stage": "onboarding"}},
        "steps": [
            send("one", receiver.url),
            send("two", receiver.url),
            {"id": "day", "type": "wait", "seconds": DAY},
            send("three", receiver.url),
            send("four", receiver.url),
            send("receipt", receiver.url, transactional=True),
        ],
    }
    async with running(
        "clm_campaigns", migrated, bootstrap_servers, global_cap_channels=weekly, **CLOCK
    ) as (client, rt):
        journey = await create(client, admin_key, body)
        c = cid()
        await publish(bootstrap_servers, rt.topics.transitions, c, transition(c, "onboarding"))

        # Sent side by side: in any order.
        async def two() -> bool:
            return sorted(steps_to(receiver, c)) == ["one", "two"]

        await eventually(two, what="the first two messages")
        await advance(client, admin_key, DAY + 60)

        async def done() -> bool:
            return sorted(steps_to(receiver, c)) == ["one", "receipt", "three", "two"]

        await eventually(done, what="the third message and the receipt")
        (run,) = await runs_of(client, read_key, c, journey)
        outcomes = {s["step_id"]: s["outcome"] for s in run["steps"]}
        assert outcomes["four"] == "global_cap" and outcomes["receipt"] == "sent"
        # A week later the cap has room again.
        r = await client.post(
            "/v1/triggers",
            json={
                "name": "next week's news",
                "on": {"kind": "transition", "to_stage": "active"},
                "action": {
                    "channel": "webhook",
                    "url": receiver.url,
                    "payload": '{"customer": "{{ customer.id }}", "step": "news"}',
                },
            },
            headers=bearer(admin_key),
        )
        assert r.status_code == 201, r.text
        await advance(client, admin_key, 7 * DAY)
        now = datetime.now(UTC) + timedelta(days=8, seconds=60)
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            c,
            transition(c, "active", "onboarding", at=now),
        )

        async def news() -> bool:
            return steps_to(receiver, c)[-1:] == ["news"]

        await eventually(news, what="next week's message")


async def test_entering_a_segment_starts_a_journey(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    tag = f"jseg{uuid.uuid4().hex[:8]}"
    inside, outside = cid(), cid()
    async with running("clm_campaigns", migrated, bootstrap_servers, **CLOCK) as (client, rt):
        condition = f'stage == "at_risk" && traits.tag == "{tag}"'
        r = await client.post(
            "/v1/segments", json={"name": tag, "condition": condition}, headers=bearer(admin_key)
        )
        assert r.status_code == 201, r.text
        segment = r.json()["id"]

        async def recomputed() -> bool:
            seg = await client.get(f"/v1/segments/{segment}", headers=bearer(read_key))
            return bool((seg.json()["recompute"] or {}).get("finished_at"))

        await eventually(recomputed, what="the segment's first recompute")
        body = {
            "name": "segment entry",
            "entry": {"on": {"kind": "entered_segment", "segment_id": segment}},
            "steps": [send("hello", receiver.url)],
        }
        journey = await create(client, admin_key, body)
        for c in (inside, outside):
            tagged = event(c, "web.identified", {"traits": {"tag": tag}})
            await publish(bootstrap_servers, rt.topics.domain("web.identified"), c, tagged)
            await projected(engine, c, f"traits->>'tag' = '{tag}'")
        await publish(
            bootstrap_servers, rt.topics.transitions, inside, transition(inside, "at_risk")
        )
        await publish(
            bootstrap_servers, rt.topics.transitions, outside, transition(outside, "lapsed")
        )

        async def greeted() -> bool:
            return steps_to(receiver, inside) == ["hello"]

        await eventually(greeted, what="the journey of the customer who entered the segment")
        await projected(engine, outside, "stage = 'lapsed'")
        assert await runs_of(client, read_key, outside, journey) == []
        (run,) = await runs_of(client, read_key, inside, journey)
        assert run["status"] == "completed"
