"""Scoring announces each served model version on the models topic, through its outbox,
once: a refit that scores everyone as the last announced one stores a version and stays
quiet. Each test has a database of its own, since the last announced model is state."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from kit import bearer, fresh_database, make_key, produce, purchase, read_topic, running
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_events.envelope import decode_kafka_record
from clm_events.privacy import Tombstones
from clm_events.settings import ClmSettings
from clm_events.topics import Topics, ensure_topics
from clm_scoring import models
from clm_scoring.config import Settings
from clm_scoring.jobs import Jobs, Scorer


def bought(customer: str, days_ago: int, amount: str) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    return purchase(customer, uuid.uuid4().hex[:8], amount, time=at.isoformat())


async def until(client: httpx.AsyncClient, path: str, key: str, done: Any) -> dict[str, Any]:
    """GET `path` until `done(body)`."""
    for _ in range(150):
        r = await client.get(path, headers=bearer(key))
        if r.status_code == 200 and done(r.json()):
            body: dict[str, Any] = r.json()
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path}: {r.status_code} {r.text}")


async def test_a_refit_announces_its_model_once_and_an_identical_one_not_again(
    database_url: str, bootstrap_servers: str
) -> None:
    rng = np.random.default_rng(5)
    async with fresh_database(database_url) as url:
        admin, read = await make_key(url, "admin"), await make_key(url, "read")
        async with running("clm_scoring", url, bootstrap_servers) as (client, runtime):
            # The refit at start: nobody bought yet, so the priors' mode (version 1).
            start = await until(client, "/v1/model", read, lambda b: b["version"] == 1)
            history, repeat = [], {}
            for c in range(40):
                days = set(rng.integers(0, 200, size=int(rng.integers(1, 5))).tolist())
                history += [bought(f"c{c}", d, f"{rng.gamma(4.0, 10.0):.2f}") for d in days]
                repeat[f"c{c}"] = len(days) - 1
            await produce(bootstrap_servers, runtime.topics.domain("purchase.completed"), history)
            for c, x in repeat.items():
                await until(
                    client,
                    f"/v1/customers/{c}/score",
                    read,
                    lambda b, x=x: b["summary"]["repeat_purchases"] == x,
                )
            refit = (await client.post("/v1/model/refit", headers=bearer(admin))).json()
            clvs = [
                (await client.get(f"/v1/customers/{c}/score", headers=bearer(read))).json()["clv"]
                for c in repeat
            ]
            cuts = await until(client, "/v1/rfm/cuts", read, lambda b: True)
            again = (await client.post("/v1/model/refit", headers=bearer(admin))).json()
            records = await read_topic(bootstrap_servers, runtime.topics.models, expect=2)

    events = [decode_kafka_record(r.headers, r.value) for r in records]
    # The first refit had nobody to cut; the second announces its cut points with it.
    # The third (same data) stores a model and cut points equal to them: not announced.
    assert [e.id for e in events] == ["score-model:1", f"score-model:2:rfm:{cuts['version']}"]
    assert events[0].data.model_dump()["rfm"] is None
    assert events[1].data.model_dump()["rfm"] == {
        k: cuts[k] for k in ("version", "recency", "frequency", "monetary")
    }
    assert (refit["version"], again["version"]) == (2, 3)
    assert refit["published_at"] is not None and again["published_at"] is None
    assert again["purchase_params"] == refit["purchase_params"]
    assert {r.key for r in records} == {b"score-model"}
    first, last = events[0].data.model_dump(), events[-1].data.model_dump()
    assert first["purchase_params"] == start["purchase_params"]
    assert first["clv_top_decile"] is None and first["spend_params"] is None
    assert (events[-1].type, events[-1].source, events[-1].subject) == (
        "lifecycle.score_model_served",
        "clm/scoring",
        "score-model",
    )
    for field in ("model", "estimator", "purchase_params", "spend_params", "clv_top_decile"):
        assert last[field] == refit[field], field
    assert (last["model"], last["estimator"], last["version"]) == ("bgnbd", "map", 2)
    assert last["spend_params"] is not None
    # The base scored under the new model as of the fit date, as the rescore then stores it.
    assert last["clv_top_decile"] == pytest.approx(np.percentile(clvs, 90), abs=0.011)
    assert last["horizon_months"] == 12
    assert last["fitted_at"] == datetime.fromisoformat(refit["fit"]["fitted_at"])


async def test_the_model_is_described_before_any_fit_and_a_stored_heuristic_until_a_refit(
    database_url: str, bootstrap_servers: str
) -> None:
    async with fresh_database(database_url) as url:
        engine = create_async_engine(url)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        topics = Topics(prefix=f"s{uuid.uuid4().hex[:8]}.", partitions=2)
        await ensure_topics(bootstrap_servers, topics.all())
        scorer = Scorer(Settings(common=ClmSettings(database_url=url)), topics)
        jobs = Jobs(scorer, sessions, Tombstones(models.privacy_tombstones, b"k", timedelta(1)))
        try:
            none = await jobs.describe_model()
            async with sessions() as session, session.begin():
                # As the release before the small-data model stored it.
                await session.execute(
                    models.model_versions.insert().values(
                        model="heuristic",
                        time_unit="week",
                        typical_gap=12.0,
                        customers=3,
                        repeat_customers=1,
                        window_end=datetime.now(UTC).date(),
                        duration_seconds=0.01,
                        notes=["1 repeat-buying customers, fewer than the 500 ..."],
                        trigger="schedule",
                    )
                )
            old = await jobs.describe_model()
            async with sessions() as session:
                scored_with = await jobs.scorer.served_model(session)
            new = await jobs.refit(trigger="api")
            async with sessions() as session:
                outbox = models.outbox.c
                queued = (await session.execute(sa.select(outbox.topic, outbox.event_id))).all()
        finally:
            await engine.dispose()
    # Before any version: the priors' mode, said so.
    assert (none["model"], none["estimator"], none["version"]) == ("bgnbd", "map", None)
    assert none["purchase_params"] == {"r": 1.0, "alpha": 90 / 7, "a": 0.5, "b": 1.5}
    assert none["notes"][0] == "no model version stored yet"
    assert "no purchases yet" in none["notes"][1]
    assert (old["model"], old["estimator"], old["version"]) == ("heuristic", None, 1)
    assert old["clv_top_decile"] is None and old["published_at"] is None
    assert "earlier release" in old["notes"][-1]
    assert scored_with.kind.value == "heuristic" and scored_with.heuristic.typical_gap == 12.0
    assert new is not None and (new["model"], new["estimator"], new["version"]) == (
        "bgnbd",
        "map",
        2,
    )
    assert queued == [(topics.models, "score-model:2")]
