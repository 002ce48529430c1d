"""The stage engine against the real broker and database: events and time move customers,
transitions are published, the API answers, models change over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kit import bearer, make_key, produce, read_topic, running
from stagekit import buy, domain_topic, event, published, utc, wait_for

from clm_events.deadletter import reason_of


def _journeys(u: str) -> dict[str, list[dict[str, Any]]]:
    ada, bob, cid = f"ada-{u}", f"bob-{u}", f"cid-{u}"
    return {
        ada: [
            event(ada, f"su-{u}", "web.signed_up", "2011-01-01T09:00:00Z", email="ada@example.com"),
            buy(ada, f"{u}-1", "2011-01-05T12:00:00Z"),
            buy(ada, f"{u}-2", "2011-01-20T12:00:00Z"),
            buy(ada, f"{u}-3", "2011-02-10T12:00:00Z"),
            buy(ada, f"{u}-4", "2011-03-01T12:00:00Z"),
            event(ada, f"nps-{u}", "support.nps_submitted", "2011-03-02T12:00:00Z", score=10),
            buy(ada, f"{u}-5", "2012-06-01T12:00:00Z"),
        ],
        bob: [event(bob, f"pv-{u}", "web.page_viewed", "2011-02-01T09:00:00Z", url="/")],
        cid: [
            buy(cid, f"{u}-6", "2011-05-01T12:00:00Z"),
            event(
                cid,
                f"pf-{u}",
                "billing.payment_failed",
                "2011-05-03T12:00:00Z",
                invoice_id="inv-1",
                amount="9.00",
                currency="EUR",
            ),
        ],
    }


async def _publish(bootstrap: str, prefix: str, events: list[dict[str, Any]]) -> None:
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_topic.setdefault(domain_topic(prefix, e), []).append(e)
    for topic, values in by_topic.items():
        await produce(bootstrap, topic, values)


async def test_events_and_time_move_customers_through_the_default_stages(
    migrated: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:8]
    journeys = _journeys(u)
    ada, bob, cid = list(journeys)
    read = bearer(await make_key(migrated, "read"))
    async with running(
        "clm_stage_engine", migrated, bootstrap_servers, timer_interval=0.2, settle_seconds=1.0
    ) as (
        client,
        runtime,
    ):
        prefix = runtime.topics.prefix
        # Arrival order scrambled and one event twice: the outcome must not care.
        events = [e for journey in journeys.values() for e in reversed(journey)]
        await _publish(bootstrap_servers, prefix, [*events, journeys[ada][1]])
        # A derived type on a domain topic is a producer bug: dead-lettered, the rest goes on.
        forged = event(ada, f"f-{u}", "campaign.action_fired", "2011-01-01T00:00:00Z")
        forged["data"] = {"trigger_id": "t", "action_id": "a", "channel": "email", "status": "x"}
        await produce(bootstrap_servers, f"{prefix}events.web", [forged])

        async def history(customer: str) -> list[dict[str, Any]]:
            r = await client.get(f"/v1/customers/{customer}/transitions", headers=read)
            return r.json()["transitions"] if r.status_code == 200 else []

        ada_history = await wait_for(lambda: history(ada), lambda h: len(h) >= 9)
        assert [(t["to_stage"], t["cause"]) for t in ada_history] == [
            ("prospect", "event"),
            ("onboarding", "event"),
            ("active", "event"),
            ("loyal", "event"),
            ("advocate", "event"),
            ("at_risk", "time"),  # no event needed: inactivity alone
            ("lapsed", "time"),
            ("won_back", "event"),
            ("lapsed", "time"),
        ]
        # Twice the usual gap (55 days / 3) after March 1st 12:00, at the next midnight tick.
        assert ada_history[5]["at"] == "2011-04-08T00:00:00Z"
        assert ada_history[7]["cause_event"]["id"] == f"ord-{u}-5"
        assert ada_history[4]["facts"]["latest_nps"] == 10
        cid_history = await wait_for(lambda: history(cid), lambda h: len(h) >= 3)
        assert [t["to_stage"] for t in cid_history] == ["onboarding", "at_risk", "lapsed"]
        assert [t["to_stage"] for t in await history(bob)] == ["prospect"]

        customer = (await client.get(f"/v1/customers/{ada}", headers=read)).json()
        assert customer["stage"] == "lapsed"
        assert customer["facts"]["purchases_total"] == 5
        assert customer["facts"]["email"] == "ada@example.com"
        assert customer["since"] == ada_history[-1]["at"]

        # Every transition of the final history left through the outbox as a
        # lifecycle.stage_changed event, and no event was published twice. (Arrival out of
        # order may also have published transitions a later event then rewrote.)
        final = {t["id"] for t in [*ada_history, *cid_history, *await history(bob)]}
        events_out = await published(
            bootstrap_servers, runtime.topics.transitions, lambda es: final <= {e.id for e in es}
        )
        assert final <= {e.id for e in events_out}
        assert len({e.id for e in events_out}) == len(events_out)
        ada_final = {e.id: e.data.to_stage for e in events_out if e.subject == ada}  # type: ignore[union-attr]
        assert [ada_final[t["id"]] for t in ada_history] == [t["to_stage"] for t in ada_history]
        dead = await read_topic(bootstrap_servers, runtime.topics.deadletter, expect=1)
        assert len(dead) == 1
        assert "campaign.action_fired" in reason_of(dead[0].headers)["reason"]

        # Flows in 2011 are exactly these customers' transitions in 2011.
        flows = (
            await client.get(
                "/v1/flows",
                params={"from": "2011-01-01T00:00:00Z", "to": "2012-01-01T00:00:00Z"},
                headers=read,
            )
        ).json()["flows"]
        expected = Counter(
            (t["from_stage"], t["to_stage"])
            for t in [*ada_history, *cid_history, *await history(bob)]
            if t["at"].startswith("2011")
        )
        assert {(f["from_stage"], f["to_stage"]): f["count"] for f in flows} == expected

        kpis = (
            await client.get(
                "/v1/kpis",
                params={"from": "2011-07-01T00:00:00Z", "to": "2012-01-01T00:00:00Z"},
                headers=read,
            )
        ).json()
        # Both customers were at risk on July 1st and lapsed by the end of the year.
        assert (kpis["customers_at_start"], kpis["retention_rate"], kpis["churn_rate"]) == (
            2,
            0.0,
            1.0,
        )
        first_half = (
            await client.get(
                "/v1/kpis",
                params={"from": "2011-01-01T00:00:00Z", "to": "2011-07-01T00:00:00Z"},
                headers=read,
            )
        ).json()
        assert (first_half["prospects"], first_half["conversion_rate"]) == (2, 0.5)

        stages = (await client.get("/v1/stages", headers=read)).json()
        assert stages["stages"]["lapsed"] >= 2 and stages["stages"]["prospect"] >= 1

        metrics = (await client.get("/metrics")).text
        assert (
            'clm_stage_transitions_total{cause="time",from_stage="at_risk",to_stage="lapsed"}'
            in metrics
        )
        assert 'clm_stage_events_total{type="purchase.completed"}' in metrics

        # Reads need a key; unknown customers are 404.
        assert (await client.get(f"/v1/customers/{ada}")).status_code == 401
        assert (await client.get("/v1/customers/nobody-" + u, headers=read)).status_code == 404
        bad = await client.get(
            "/v1/flows",
            params={"from": "2012-01-01T00:00:00Z", "to": "2011-01-01T00:00:00Z"},
            headers=read,
        )
        assert bad.status_code == 422 and "'from' must be before 'to'" in bad.text


async def test_the_timer_leaves_a_customer_alone_until_time_could_move_them(
    migrated: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:8]
    buyer, visitor = f"new-{u}", f"visitor-{u}"
    bought = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
    read = bearer(await make_key(migrated, "read"))
    async with running(
        "clm_stage_engine", migrated, bootstrap_servers, timer_interval=0.2, settle_seconds=1.0
    ) as (
        client,
        runtime,
    ):
        prefix = runtime.topics.prefix
        iso = bought.isoformat().replace("+00:00", "Z")
        await _publish(
            bootstrap_servers,
            prefix,
            [buy(buyer, f"{u}-1", iso), event(visitor, f"pv-{u}", "web.page_viewed", iso, url="/")],
        )

        async def customer(cid: str) -> dict[str, Any]:
            r = await client.get(f"/v1/customers/{cid}", headers=read)
            return r.json() if r.status_code == 200 else {}

        # The timer replays the days since the purchase, probes one day further and
        # schedules the customer after it, not at the next midnight; each later wake-up
        # probes twice as far (the domain tests follow that to the end of onboarding).
        def timed(c: dict[str, Any]) -> bool:  # the timer has looked at the customer
            return bool(c.get("next_check_at")) and utc(c["next_check_at"]) > datetime.now(UTC)

        got = await wait_for(lambda: customer(buyer), timed)
        checked = utc(got["evaluated_until"])
        next_midnight = (checked + timedelta(days=1)).replace(hour=0, minute=0, second=0)
        next_midnight = next_midnight.replace(microsecond=0)
        assert got["stage"] == "onboarding"
        assert got["next_check_at"] == _iso(next_midnight + timedelta(days=1))
        assert utc(got["next_check_at"]) < bought + timedelta(days=30)
        seen = await wait_for(lambda: customer(visitor), lambda c: bool(c))
        assert (seen["stage"], seen["next_check_at"]) == ("prospect", None)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_a_model_change_over_http_reevaluates_customers_and_emits_transitions(
    migrated: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:8]
    carol = f"carol-{u}"
    read = bearer(await make_key(migrated, "read"))
    admin = bearer(await make_key(migrated, "admin"))
    async with running(
        "clm_stage_engine", migrated, bootstrap_servers, timer_interval=0.2, settle_seconds=1.0
    ) as (
        client,
        runtime,
    ):
        prefix = runtime.topics.prefix
        await _publish(
            bootstrap_servers,
            prefix,
            [event(carol, f"pv-{u}", "web.page_viewed", "2010-05-01T09:00:00Z", url="/")],
        )

        async def stage() -> Any:
            r = await client.get(f"/v1/customers/{carol}", headers=read)
            return r.json().get("stage") if r.status_code == 200 else None

        assert await wait_for(stage, lambda s: s == "prospect") == "prospect"
        current = (await client.get("/v1/lifecycle-model", headers=read)).json()
        assert "days_since_last_purchase" in current["variables"]

        # Invalid models are refused with the reason, and change nothing.
        invalid = {
            "stages": ["prospect", "active"],
            "rules": [{"name": "r1", "to": "active", "when": "visits > 3"}],
        }
        r = await client.put("/v1/lifecycle-model", json=invalid, headers=admin)
        assert r.status_code == 422
        assert r.json()["errors"] == [{"path": "rules[0].when", "reason": "unknown fact 'visits'"}]
        r = await client.put(
            "/v1/lifecycle-model",
            json={"stages": ["prospect", "vip"], "rules": []},
            headers=admin,
        )
        assert r.status_code == 422 and "unknown stage 'vip'" in r.text
        r = await client.put("/v1/lifecycle-model", json={"stages": []}, headers=admin)
        assert r.status_code == 422  # schema errors name the field too
        assert (
            await client.put("/v1/lifecycle-model", json=invalid, headers=read)
        ).status_code == 403

        # Everyone who ever visited is now "active" in the new model.
        new_model = {
            "stages": current["stages"],
            "rules": [
                {"name": "visitors", "to": "active", "when": "last_web_activity_at != null"},
                *current["rules"],
            ],
        }
        # A dry run says who would move (carol, among customers of other tests sharing the
        # database) and stores nothing: carol is still a prospect under the same version.
        dry = await client.post("/v1/lifecycle-model/dry-run", json=new_model, headers=admin)
        assert dry.status_code == 200, dry.text
        report = dry.json()
        assert report["complete"] is True and report["customers_evaluated"] >= 1
        moved = {(m["from_stage"], m["to_stage"]): m["count"] for m in report["moves"]}
        assert moved.get(("prospect", "active"), 0) >= 1
        assert report["would_move"] == sum(moved.values())
        bad_dry = await client.post("/v1/lifecycle-model/dry-run", json=invalid, headers=admin)
        assert bad_dry.status_code == 422 and bad_dry.json()["errors"][0]["path"] == "rules[0].when"
        assert (
            await client.post("/v1/lifecycle-model/dry-run", json=new_model, headers=read)
        ).status_code == 403
        assert await stage() == "prospect"
        unchanged = (await client.get("/v1/lifecycle-model", headers=read)).json()
        assert unchanged["version"] == current["version"]

        r = await client.put("/v1/lifecycle-model", json=new_model, headers=admin)
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert version >= 2
        assert await wait_for(stage, lambda s: s == "active") == "active"
        transitions = (await client.get(f"/v1/customers/{carol}/transitions", headers=read)).json()[
            "transitions"
        ]
        assert [(t["to_stage"], t["cause"], t["model_version"]) for t in transitions][-1] == (
            "active",
            "model_change",
            version,
        )
        versions = (await client.get("/v1/lifecycle-model/versions", headers=read)).json()
        assert [v["version"] for v in versions["versions"]][:2] == [version, version - 1]
        events_out = await published(
            bootstrap_servers,
            runtime.topics.transitions,
            lambda es: len([e for e in es if e.subject == carol]) >= 2,
        )
        causes = [e.data.cause for e in events_out if e.subject == carol]  # type: ignore[union-attr]
        assert causes == ["event", "model_change"]

        # Put the default model back for the other tests.
        restore = {"stages": current["stages"], "rules": current["rules"]}
        assert (
            await client.put("/v1/lifecycle-model", json=restore, headers=admin)
        ).status_code == 200


async def test_a_history_arriving_event_by_event_settles_and_a_late_event_retracts(
    migrated: str, bootstrap_servers: str
) -> None:
    """Orders of months ago sent one at a time: time moves the customer only once they
    stop arriving, so nothing published is rewritten by the next order. A later order
    dated in between rewrites the history: what it removed is announced as retracted,
    before what replaced it, and each transition says which entry into its stage it is."""
    u = uuid.uuid4().hex[:8]
    cust = f"hist-{u}"
    now = datetime.now(UTC).replace(microsecond=0)
    read = bearer(await make_key(migrated, "read"))
    async with running(
        "clm_stage_engine", migrated, bootstrap_servers, timer_interval=0.2, settle_seconds=3.0
    ) as (client, runtime):
        prefix, topic = runtime.topics.prefix, runtime.topics.transitions

        async def order(name: str, days_ago: int) -> None:
            when = _iso(now - timedelta(days=days_ago))
            await _publish(bootstrap_servers, prefix, [buy(cust, f"{u}-{name}", when)])

        async def history() -> list[str]:
            r = await client.get(f"/v1/customers/{cust}/transitions", headers=read)
            return [t["id"] for t in r.json()["transitions"]] if r.status_code == 200 else []

        async def mine(until: Callable[[list[Any]], bool]) -> list[Any]:
            def done(events: list[Any]) -> bool:
                return until([e for e in events if e.subject == cust])

            return [e for e in await published(bootstrap_servers, topic, done) if e.subject == cust]

        def ids(events: list[Any], kind: str) -> list[str]:
            return [e.data.transition_id for e in events if e.type == kind]

        async def purchases() -> Any:
            r = await client.get(f"/v1/customers/{cust}", headers=read)
            return r.json()["facts"]["purchases_total"] if r.status_code == 200 else 0

        for n, days_ago in enumerate((400, 380, 360)):
            await order(str(n), days_ago)
            await wait_for(purchases, lambda total, n=n: total == n + 1)
            await asyncio.sleep(1.0)  # time enough for the timer, were it not held back
        settled = await wait_for(history, lambda h: len(h) >= 4)  # ... at_risk, lapsed
        events = await mine(lambda es: set(ids(es, CHANGED)) >= set(settled))
        assert [e.type for e in events] == [CHANGED] * len(settled)
        assert ids(events, CHANGED) == settled
        assert [e.data.entry for e in events] == [1] * len(settled)

        # A purchase dated 100 days after the last one: at_risk and lapsed move later.
        await order("late", 260)
        rewritten = await wait_for(history, lambda h: h != settled)
        gone = set(settled) - set(rewritten)
        assert gone
        events = (await mine(lambda es: set(ids(es, RETRACTED)) >= gone))[len(settled) :]
        assert set(ids(events, RETRACTED)) == gone
        first_new = next(n for n, e in enumerate(events) if e.type == CHANGED)
        assert {e.type for e in events[:first_new]} == {RETRACTED}  # retractions come first
        assert ids(events, CHANGED) == [t for t in rewritten if t not in settled]


CHANGED, RETRACTED = "lifecycle.stage_changed", "lifecycle.transition_retracted"
