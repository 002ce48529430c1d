"""Caps, cooldown, quiet hours and holdout suppress (or hold) with the right reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

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
from kit import bearer, running
from sqlalchemy.ext.asyncio import AsyncEngine


async def test_caps_cooldown_global_cap_and_holdout_record_their_reason(
    migrated: str, bootstrap_servers: str, receiver: WebhookReceiver, admin_key: str, read_key: str
) -> None:
    async with running(
        "clm_campaigns", migrated, bootstrap_servers, global_cap_max=2, **ALLOW_LOCAL
    ) as (client, rt):
        specs = {
            "at_risk": {"frequency_cap": {"max": 1, "period_seconds": 3600}},
            "lapsed": {"cooldown_seconds": 3600},
            "won_back": {"holdout_percent": 100},
            "loyal": {},
        }
        ids = {}
        for stage, extra in specs.items():
            r = await client.post(
                "/v1/triggers",
                json=webhook_trigger(receiver.url, to_stage=stage, **extra),
                headers=bearer(admin_key),
            )
            assert r.status_code == 201, r.text
            ids[stage] = r.json()["id"]

        capped, cooled, held, busy = cid(), cid(), cid(), cid()
        topic = rt.topics.transitions
        await publish(
            bootstrap_servers,
            topic,
            capped,
            transition(capped, "at_risk"),
            transition(capped, "at_risk"),
        )
        await publish(
            bootstrap_servers,
            topic,
            cooled,
            transition(cooled, "lapsed"),
            transition(cooled, "lapsed"),
        )
        await publish(bootstrap_servers, topic, held, transition(held, "won_back"))
        # Three different triggers for one customer: the global cap (2) stops the third.
        await publish(
            bootstrap_servers,
            topic,
            busy,
            transition(busy, "at_risk"),
            transition(busy, "lapsed"),
            transition(busy, "loyal"),
        )

        async def settled() -> list[dict[str, object]] | None:
            rows = [
                a
                for c in (capped, cooled, held, busy)
                for a in await actions(client, read_key, customer_id=c)
            ]
            done = len(rows) == 8 and all(a["status"] not in ("pending", "sending") for a in rows)
            return rows if done else None

        rows = await eventually(settled, what="all eight matches to be settled")

        def outcome(customer: str) -> list[tuple[object, object]]:
            return sorted(
                (
                    (a["status"], a["suppressed_reason"])
                    for a in rows
                    if a["customer_id"] == customer
                ),
                key=str,
            )

        assert outcome(capped) == [("delivered", None), ("suppressed", "frequency_cap")]
        assert outcome(cooled) == [("delivered", None), ("suppressed", "cooldown")]
        assert outcome(held) == [("held_out", "holdout")]
        assert outcome(busy) == [
            ("delivered", None),
            ("delivered", None),
            ("suppressed", "global_cap"),
        ]
        sent_to = sorted(r.json()["customer"] for r in receiver.received)
        assert sent_to == sorted([capped, cooled, busy, busy])

        stats = (
            await client.get(f"/v1/triggers/{ids['at_risk']}/stats", headers=bearer(read_key))
        ).json()
        assert stats["matched"] == 3
        assert stats["delivered"] == 2
        assert stats["suppressed"] == {"total": 1, "by_reason": {"frequency_cap": 1}}
        metrics = (await client.get("/metrics")).text
        assert 'clm_campaigns_suppressions_total{reason="global_cap"}' in metrics


async def test_quiet_hours_hold_the_action_until_the_window_ends_in_the_customers_timezone(
    migrated: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
    admin_key: str,
    read_key: str,
) -> None:
    tz = "Asia/Tokyo"
    local_now = datetime.now(ZoneInfo(tz))
    start = (local_now - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local_now + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    async with running("clm_campaigns", migrated, bootstrap_servers, **ALLOW_LOCAL) as (
        client,
        rt,
    ):
        body = webhook_trigger(
            receiver.url,
            quiet_hours={"start": start.isoformat("minutes"), "end": end.isoformat("minutes")},
        )
        trigger = (await client.post("/v1/triggers", json=body, headers=bearer(admin_key))).json()
        sleeper = cid()
        await publish(
            bootstrap_servers,
            rt.topics.domain("web.identified"),
            sleeper,
            event(sleeper, "web.identified", {"traits": {"timezone": tz}}),
        )
        await projected(engine, sleeper, "traits ? 'timezone'")
        await publish(
            bootstrap_servers, rt.topics.transitions, sleeper, transition(sleeper, "at_risk")
        )
        held = await eventually(
            lambda: actions(client, read_key, customer_id=sleeper), what="the held action"
        )
        assert [(a["status"], a["deferred_reason"]) for a in held] == [("pending", "quiet_hours")]
        due = datetime.fromisoformat(held[0]["due_at"]).astimezone(ZoneInfo(tz))
        assert due.time().replace(second=0, microsecond=0) == end
        assert due > datetime.now(UTC)
        assert receiver.received == []
        stats = (
            await client.get(f"/v1/triggers/{trigger['id']}/stats", headers=bearer(read_key))
        ).json()
        assert stats["deferred"] == {"quiet_hours": 1}
        assert stats["in_flight"] == 1
