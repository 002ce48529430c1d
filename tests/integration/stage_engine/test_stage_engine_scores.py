"""The served score model reaches the stage engine as an event: it becomes a lifecycle
model version, every customer is re-evaluated under it (cause model_change), and rules
that read scores see them as of each moment of the history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from kit import bearer, fresh_database, make_key, produce
from stagekit import WEEKLY, buy, domain_topic, instance, served, wait_for


async def test_a_served_score_model_becomes_a_version_and_moves_who_it_should(
    database_url: str, bootstrap_servers: str
) -> None:
    u = uuid.uuid4().hex[:6]
    prefix = f"sm{u}."
    customer = f"vip-{u}"
    now = datetime.now(UTC)
    orders = [
        buy(customer, f"{u}-{n}", (now - timedelta(days=d)).isoformat(), amount="400.00")
        for n, d in enumerate((30, 20, 10))
    ]
    async with (
        fresh_database(database_url) as db,
        instance(db, bootstrap_servers, prefix) as (
            client,
            _,
        ),
    ):
        read = bearer(await make_key(db, "read"))
        await produce(bootstrap_servers, domain_topic(prefix, orders[0]), orders)

        async def customer_state() -> dict[str, Any]:
            r = await client.get(f"/v1/customers/{customer}", headers=read)
            return r.json() if r.status_code == 200 else {}

        first = await wait_for(customer_state, lambda c: c.get("stage") == "active")
        assert first["stage"] == "active" and first["scores"] is None  # no model served yet
        before = (await client.get("/v1/lifecycle-model", headers=read)).json()
        assert before["score_model"] is None

        # Top decile 10,000: nobody is loyal by CLV. Then a refit puts the bar at 100.
        await produce(bootstrap_servers, f"{prefix}models", [served(1)])
        adopted = await wait_for(
            lambda: _model(client, read), lambda m: m["score_model"] is not None
        )
        assert adopted["version"] == before["version"] + 1
        assert adopted["score_model"]["purchase_params"] == WEEKLY
        scored = await wait_for(customer_state, lambda c: c.get("scores") is not None)
        assert scored["stage"] == "active" and scored["scores"]["clv"] > 100

        # The same parameters again (a replay, or a refit that changed nothing): no version.
        await produce(bootstrap_servers, f"{prefix}models", [served(1), served(2)])
        await produce(bootstrap_servers, f"{prefix}models", [served(3, clv_top_decile=100.0)])
        latest = await wait_for(
            lambda: _model(client, read),
            lambda m: (m["score_model"] or {}).get("clv_top_decile") == 100.0,
        )
        assert latest["version"] == adopted["version"] + 1
        loyal = await wait_for(customer_state, lambda c: c.get("stage") == "loyal")
        assert loyal["stage"] == "loyal"
        r = await client.get(f"/v1/customers/{customer}/transitions", headers=read)
        last = r.json()["transitions"][-1]
        assert (last["to_stage"], last["cause"], last["model_version"]) == (
            "loyal",
            "model_change",
            latest["version"],
        )
        assert last["facts"]["clv"] >= last["facts"]["clv_top_decile"] == 100.0


async def _model(client: Any, read: dict[str, str]) -> dict[str, Any]:
    r = await client.get("/v1/lifecycle-model", headers=read)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
