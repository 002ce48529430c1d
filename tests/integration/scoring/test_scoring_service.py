"""The scoring service against the real broker and database: purchases move scores and
publish them, silence raises churn, refits are versioned, and the small-data model is
served (and labelled) below the data minimum."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
from kit import bearer, make_key, produce, purchase, read_topic, running

from clm_events.envelope import decode_kafka_record
from clm_scoring.domain import bgnbd
from clm_scoring.jobs import Jobs, score_event_id, today


def cid() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


def bought(customer: str, days_ago: int, amount: str = "40.00") -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    order = uuid.uuid4().hex[:8]
    return purchase(customer, order, amount, time=at.isoformat())


async def score_when_ready(
    client: httpx.AsyncClient, customer: str, key: str, *, repeat_purchases: int
) -> dict[str, Any]:
    """The customer's score once the consumer has applied their purchases."""
    for _ in range(150):
        r = await client.get(f"/v1/customers/{customer}/score", headers=bearer(key))
        if r.status_code == 200 and r.json()["summary"]["repeat_purchases"] == repeat_purchases:
            body: dict[str, Any] = r.json()
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"no score for {customer}: {r.status_code} {r.text}")


async def test_purchase_scores_the_customer_and_publishes_only_material_moves(
    migrated: str, bootstrap_servers: str
) -> None:
    key = await make_key(migrated, "read")
    customer = cid()
    async with running("clm_scoring", migrated, bootstrap_servers) as (client, runtime):
        domain = runtime.topics.domain("purchase.completed")
        first = bought(customer, 60)
        await produce(bootstrap_servers, domain, [first])
        one = await score_when_ready(client, customer, key, repeat_purchases=0)

        # A repeat purchase changes what we know about the customer: a new score.
        await produce(bootstrap_servers, domain, [bought(customer, 1, "80.00"), first])
        two = await score_when_ready(client, customer, key, repeat_purchases=1)
        published = await read_topic(bootstrap_servers, runtime.topics.scores, expect=2)

    assert one["model"] == two["model"] == "bgnbd"
    assert 0 <= one["churn_probability"] <= 1
    assert abs(one["p_alive"] + one["churn_probability"] - 1) < 1e-12
    assert two["clv"] != one["clv"]
    events = [decode_kafka_record(r.headers, r.value) for r in published]
    assert [e.id for e in events] == [score_event_id(customer, 1), score_event_id(customer, 2)]
    assert not any(customer in e.id for e in events)
    assert {r.key for r in published} == {customer.encode()}
    latest = events[-1]
    assert latest.type == "lifecycle.score_updated"
    assert float(latest.data.clv) == two["clv"]  # type: ignore[union-attr]
    assert latest.data.churn_probability == two["churn_probability"]  # type: ignore[union-attr]


async def test_silent_customer_churn_rises_and_the_rise_is_published(
    migrated: str, bootstrap_servers: str
) -> None:
    key = await make_key(migrated, "read")
    customer = cid()
    async with running("clm_scoring", migrated, bootstrap_servers) as (client, runtime):
        domain = runtime.topics.domain("purchase.completed")
        # A purchase every 20 days, the last one 20 days ago.
        days = (120, 100, 80, 60, 40, 20)
        await produce(bootstrap_servers, domain, [bought(customer, d) for d in days])
        before = await score_when_ready(client, customer, key, repeat_purchases=5)
        jobs: Jobs = client._transport.app.state.jobs  # type: ignore[attr-defined]
        # The schedule rescoring everyone a year later, with no purchase meanwhile.
        await jobs.rescore_all(as_of=today() + timedelta(days=365))
        after = (await client.get(f"/v1/customers/{customer}/score", headers=bearer(key))).json()
        # Everyone else in the database is rescored too, and may publish first.
        for _ in range(20):
            published = await read_topic(bootstrap_servers, runtime.topics.scores, expect=2)
            mine = [
                decode_kafka_record(r.headers, r.value)
                for r in published
                if r.key == customer.encode()
            ]
            if len(mine) >= 2:
                break

    assert after["churn_probability"] > before["churn_probability"] + 0.5
    assert after["clv"] < before["clv"]
    assert [e.data.churn_probability for e in mine] == [  # type: ignore[union-attr]
        before["churn_probability"],
        after["churn_probability"],
    ]


async def test_a_full_refund_removes_the_purchase_from_the_customer_history(
    migrated: str, bootstrap_servers: str
) -> None:
    key = await make_key(migrated, "read")
    customer = cid()
    async with running("clm_scoring", migrated, bootstrap_servers) as (client, runtime):
        domain = runtime.topics.domain("purchase.completed")
        first, second = bought(customer, 50), bought(customer, 10)
        await produce(bootstrap_servers, domain, [first, second])
        await score_when_ready(client, customer, key, repeat_purchases=1)
        refund = {
            **second,
            "id": f"refund-{second['data']['order_id']}",
            "type": "purchase.refunded",
            "data": {**second["data"]},
        }
        await produce(bootstrap_servers, domain, [refund])
        after = await score_when_ready(client, customer, key, repeat_purchases=0)
    assert after["summary"]["last_purchase_on"] == after["summary"]["first_purchase_on"]


async def test_below_the_data_minimum_the_small_data_model_is_served_and_says_why(
    migrated: str, bootstrap_servers: str
) -> None:
    admin, read = await make_key(migrated, "admin"), await make_key(migrated, "read")
    async with running("clm_scoring", migrated, bootstrap_servers) as (client, _):
        refit = await client.post("/v1/model/refit", headers=bearer(admin))
        model = (await client.get("/v1/model", headers=bearer(read))).json()
    assert refit.status_code == 200, refit.text
    assert (model["model"], model["estimator"]) == ("bgnbd", "map")
    assert set(model["purchase_params"]) == {"r", "alpha", "a", "b"}
    assert "fewer than the 500" in model["notes"][0]
    assert "maximum a posteriori" in model["notes"][0] and "priors" in model["notes"][0]
    assert model["clv_top_decile"] > 0
    assert model["version"] == refit.json()["version"]


async def test_refit_above_the_minimum_serves_a_versioned_bgnbd_fit(
    migrated: str, bootstrap_servers: str
) -> None:
    admin, read = await make_key(migrated, "admin"), await make_key(migrated, "read")
    # Histories drawn from the BG/NBD process itself (CDNOW-like parameters, in days).
    rng = np.random.default_rng(7)
    params = bgnbd.BgNbdParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
    xs, t_xs, ages = bgnbd.simulate(params, rng.integers(60, 400, size=150), rng)
    customers = [cid() for _ in range(150)]
    history = []
    repeat: dict[str, int] = {}
    for c, x, t_x, age in zip(customers, xs, t_xs, ages, strict=True):
        later = rng.uniform(0, t_x, size=max(int(x) - 1, 0)).tolist() + ([t_x] if x else [])
        days = {int(age) - int(age - d) for d in [0.0, *later]}  # same day: one purchase
        repeat[c] = len(days) - 1
        for day in days:
            history.append(bought(c, int(age) - day, f"{rng.gamma(6.0, 5.0):.2f}"))
    async with running(
        "clm_scoring", migrated, bootstrap_servers, min_repeat_customers=10, time_unit="day"
    ) as (client, runtime):
        await produce(bootstrap_servers, runtime.topics.domain("purchase.completed"), history)
        for c in customers:
            await score_when_ready(client, c, read, repeat_purchases=repeat[c])
        last = customers[-1]
        before = (await client.get("/v1/model", headers=bearer(read))).json()
        refit = await client.post("/v1/model/refit", headers=bearer(admin))
        model = (await client.get("/v1/model", headers=bearer(read))).json()
        scored = (await client.get(f"/v1/customers/{last}/score", headers=bearer(read))).json()
        metrics = (await client.get("/metrics")).text

    assert refit.status_code == 200, refit.text
    assert (model["model"], model["estimator"]) == ("bgnbd", "mle"), model
    assert model["version"] > (before["version"] or 0)
    assert set(model["purchase_params"]) == {"r", "alpha", "a", "b"}
    assert model["fit"]["customers"] >= 150 and model["fit"]["repeat_customers"] >= 10
    assert model["fit"]["log_likelihood"] < 0
    assert model["fit"]["trigger"] == "api"
    assert scored["model"] == "bgnbd" and scored["model_version"] == model["version"]
    assert 'clm_scoring_model_parameter{model="bgnbd",parameter="r"}' in metrics
    assert "clm_scoring_scores_published_total" in metrics


async def test_api_refuses_bad_requests_and_missing_rights(
    migrated: str, bootstrap_servers: str
) -> None:
    read = await make_key(migrated, "read")
    async with running("clm_scoring", migrated, bootstrap_servers) as (client, _):
        no_key = await client.get("/v1/model")
        refit_by_reader = await client.post("/v1/model/refit", headers=bearer(read))
        unknown = await client.get(f"/v1/customers/{cid()}/score", headers=bearer(read))
        too_long = await client.get(f"/v1/customers/{'x' * 300}/score", headers=bearer(read))
    assert no_key.status_code == 401
    assert refit_by_reader.status_code == 403
    assert unknown.status_code == 404 and "customer_id" in unknown.json()["detail"]
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["path", "customer_id"]
