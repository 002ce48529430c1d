"""Stats add up: fired, delivered, held out, conversions of treated vs holdout, uplift."""

from __future__ import annotations

from typing import Any

from campaignkit import (
    WebhookReceiver,
    actions,
    cid,
    event,
    eventually,
    publish,
    transition,
    webhook_trigger,
)
from kit import bearer, running

from clm_campaigns.domain.policy import holdout_bucket


async def test_conversions_of_treated_and_holdout_customers_give_the_uplift(
    migrated: str, bootstrap_servers: str, receiver: WebhookReceiver, admin_key: str, read_key: str
) -> None:
    async with running(
        "clm_campaigns", migrated, bootstrap_servers, webhook_allowed_networks=["127.0.0.1/32"]
    ) as (client, rt):
        body = webhook_trigger(receiver.url, holdout_percent=50, conversion_window_seconds=3600)
        trigger = (await client.post("/v1/triggers", json=body, headers=bearer(admin_key))).json()
        treated: list[str] = []
        holdout: list[str] = []
        while len(treated) < 2 or len(holdout) < 2:
            c = cid()
            group = holdout if holdout_bucket(trigger["id"], c) < 50 else treated
            if len(group) < 2:
                group.append(c)
        for c in treated + holdout:
            await publish(bootstrap_servers, rt.topics.transitions, c, transition(c, "at_risk"))

        async def settled() -> list[dict[str, Any]] | None:
            rows = await actions(client, read_key, trigger_id=trigger["id"])
            final = [a for a in rows if a["status"] in ("delivered", "held_out")]
            return rows if len(final) == 4 else None

        rows = await eventually(settled, what="four settled actions")
        assert {a["customer_id"] for a in rows if a["status"] == "held_out"} == set(holdout)

        # Both treated customers buy; one of the two held-out customers does.
        for n, c in enumerate([*treated, holdout[0]]):
            purchase = {"order_id": f"o-{n}", "amount": "20.00", "currency": "EUR"}
            await publish(
                bootstrap_servers,
                rt.topics.domain("purchase.completed"),
                c,
                event(c, "purchase.completed", purchase),
            )

        async def converted() -> dict[str, Any] | None:
            r = await client.get(f"/v1/triggers/{trigger['id']}/stats", headers=bearer(read_key))
            stats: dict[str, Any] = r.json()
            done = stats["conversions"]["treated"]["converted"] == 2
            return stats if done and stats["conversions"]["holdout"]["converted"] == 1 else None

        stats = await eventually(converted, what="three conversions")
        series = await client.get(
            f"/v1/triggers/{trigger['id']}/stats/series",
            params={"bucket": "hour"},
            headers=bearer(read_key),
        )
        assert series.status_code == 200, series.text
        points = series.json()["points"]
        too_long = await client.get(
            f"/v1/triggers/{trigger['id']}/stats/series",
            params={"bucket": "hour", "from": "2020-01-01T00:00:00Z"},
            headers=bearer(read_key),
        )
        assert too_long.status_code == 422 and "buckets" in too_long.text
    assert stats["matched"] == 4
    assert stats["fired"] == 2
    assert stats["delivered"] == 2
    assert stats["held_out"] == 2
    assert stats["suppressed"]["total"] == 0
    assert stats["conversions"] == {
        "treated": {"actions": 2, "converted": 2, "rate": 1.0},
        "holdout": {"actions": 2, "converted": 1, "rate": 0.5},
    }
    assert stats["uplift"] == {"absolute": 0.5, "relative": 1.0}
    assert len(receiver.received) == 2
    # Over time (30 days by the hour, every hour present) it adds up to the same totals.
    assert len(points) >= 30 * 24
    totals = {k: sum(p[k] for p in points) for k in points[0] if k != "at"}
    assert totals == {
        "matched": 4,
        "fired": 2,
        "delivered": 2,
        "failed": 0,
        "suppressed": 0,
        "held_out": 2,
        "converted_treated": 2,
        "converted_holdout": 1,
    }
