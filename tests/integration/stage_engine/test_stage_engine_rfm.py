"""RFM in lifecycle rules, end to end: scoring (its service, on the same broker and
database) announces its cut points with the served model, the stage engine adopts them
and moves the customer a rule `rfm_segment == "Champions"` names, as of its own events,
with the very cell scoring computes for them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from kit import bearer, fresh_database, make_key, produce, running
from stagekit import buy, instance, served, wait_for

RULES = {
    "stages": ["prospect", "active", "loyal"],
    "rules": [
        {"name": "champions", "to": "loyal", "when": 'rfm_segment == "Champions"'},
        {"name": "buyers", "to": "active", "when": "purchases_total > 0"},
        {"name": "everyone", "to": "prospect", "when": "true"},
    ],
}


async def test_a_rule_on_the_rfm_segment_moves_a_customer_once_scoring_announces_cuts(
    database_url: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:6]
    prefix = f"rfm{u}."
    now = datetime.now(UTC)

    def ago(days: int) -> str:
        return (now - timedelta(days=days)).isoformat()

    # The champion bought on five days, the last yesterday; nine others once each, 20 to
    # 180 days ago. Recency cuts start at 36 days and every frequency cut is 1: the
    # champion is R5 F5, the others F1 (New, Promising, ..., Lost).
    vip = f"vip-{u}"
    others = [f"once-{u}-{n}" for n in range(9)]
    events = [buy(vip, f"{u}-v{d}", ago(d), amount="50.00") for d in (1, 3, 5, 7, 9)]
    events += [buy(c, f"{u}-o{n}", ago(20 * (n + 1))) for n, c in enumerate(others)]
    async with (
        fresh_database(database_url) as db,
        instance(db, bootstrap_servers, prefix) as (stage_engine, _),
        running("clm_scoring", db, bootstrap_servers, topic_prefix=prefix) as (scoring, _),
    ):
        admin, read = bearer(await make_key(db, "admin")), bearer(await make_key(db, "read"))
        r = await stage_engine.put("/v1/lifecycle-model", json=RULES, headers=admin)
        assert r.status_code == 200, r.text
        await produce(bootstrap_servers, f"{prefix}events.purchase", events)

        async def state(client: Any, path: str) -> dict[str, Any]:
            r = await client.get(path, headers=read)
            return r.json() if r.status_code == 200 else {}

        async def stages() -> dict[str, str | None]:
            return {
                c: (await state(stage_engine, f"/v1/customers/{c}")).get("stage")
                for c in [vip, *others]
            }

        before = await wait_for(stages, lambda s: set(s.values()) == {"active"})
        # Scoring has every customer (then a refit computes the cut points over them).
        for c in [vip, *others]:
            await wait_for(lambda c=c: state(scoring, f"/v1/customers/{c}/score"), bool)
        vip_before = await state(stage_engine, f"/v1/customers/{vip}")
        r = await scoring.post("/v1/model/refit", headers=admin)
        assert r.status_code == 200, r.text
        cuts = await state(scoring, "/v1/rfm/cuts")

        after = await wait_for(stages, lambda s: s[vip] == "loyal", timeout=60)
        model = await state(stage_engine, "/v1/lifecycle-model")
        history = await state(stage_engine, f"/v1/customers/{vip}/transitions")
        seen = await state(stage_engine, f"/v1/customers/{vip}")
        scored = await wait_for(
            lambda: state(scoring, f"/v1/customers/{vip}/score"),
            lambda s: s["rfm"]["cuts_version"] == cuts["version"],
        )
        theirs = {
            c: (await state(scoring, f"/v1/customers/{c}/score"))["rfm"]["cell"] for c in others
        }
        mine = {c: (await state(stage_engine, f"/v1/customers/{c}"))["facts"] for c in others}

    # Before any cut points: no RFM, nobody is a champion.
    assert set(before.values()) == {"active"}
    assert vip_before["facts"]["rfm_segment"] is None
    # The announcement reached the stage engine as the served model's RFM section...
    assert model["score_model"]["rfm"] == {
        k: cuts[k] for k in ("version", "recency", "frequency", "monetary")
    }
    # ... and moved the champion, only them, as of the change.
    assert after == {vip: "loyal", **dict.fromkeys(others, "active")}
    last = history["transitions"][-1]
    assert (last["from_stage"], last["to_stage"], last["cause"]) == (
        "active",
        "loyal",
        "model_change",
    )
    assert last["model_version"] == model["version"]
    assert (last["facts"]["rfm_segment"], last["facts"]["rfm_cell"]) == ("Champions", "555")
    # The stage engine's RFM is scoring's, for every customer.
    assert scored["rfm"]["cell"] == seen["facts"]["rfm_cell"] == "555"
    assert {c: f["rfm_cell"] for c, f in mine.items()} == theirs
    assert {f["rfm_frequency"] for f in mine.values()} == {1}


async def test_new_cut_points_under_rules_that_read_no_rfm_re_evaluate_nobody(
    database_url: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:6]
    prefix = f"rfn{u}."
    customer = f"c-{u}"
    bought_at = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    cuts = {"version": 1, "recency": [1.0, 2.0, 3.0, 4.0], "frequency": [1.0, 1.0, 1.0, 2.0],
            "monetary": [5.0, 10.0, 20.0, 40.0]}  # fmt: skip
    with_cuts = served(1, rfm=cuts)
    with_cuts["id"] = "score-model:1:rfm:1"
    async with (
        fresh_database(database_url) as db,
        instance(db, bootstrap_servers, prefix) as (client, _),
    ):
        read = bearer(await make_key(db, "read"))

        async def customer_state() -> dict[str, Any]:
            r = await client.get(f"/v1/customers/{customer}", headers=read)
            return r.json() if r.status_code == 200 else {}

        async def versions() -> tuple[int, int | None]:
            model = (await client.get("/v1/lifecycle-model", headers=read)).json()
            return model["version"], (await customer_state()).get("model_version")

        await produce(bootstrap_servers, f"{prefix}events.purchase", [buy(customer, u, bought_at)])
        await wait_for(customer_state, lambda c: c.get("stage") == "active")
        # The default rules read the CLV: a served model re-evaluates everyone.
        await produce(bootstrap_servers, f"{prefix}models", [served(1)])
        first = await wait_for(versions, lambda v: v[0] == v[1] and v[0] > 1)
        scored = await customer_state()
        # New cut points alone: the customers take the new version, unevaluated.
        await produce(bootstrap_servers, f"{prefix}models", [with_cuts])
        second = await wait_for(versions, lambda v: v[0] == v[1] and v[0] > first[0])
        after = await customer_state()

    assert second[0] == first[0] + 1
    assert after["evaluated_until"] == scored["evaluated_until"]
    assert after["next_check_at"] == scored["next_check_at"]
    # The facts still show RFM under the new cut points: 3 days, R3; one day, F1; 20, M3.
    assert (after["facts"]["rfm_cell"], after["facts"]["rfm_segment"]) == ("313", "About to sleep")
