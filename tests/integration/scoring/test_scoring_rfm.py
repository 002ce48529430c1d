"""RFM in scoring: quintiles, cells and segments of a known population equal a hand
computation; on CDNOW the cut points equal numpy's; scores published on clm.scores carry
them; the grid adds up to the base and segment moves are counted over a window. Each test
has a database of its own: cut points are over every customer of the database."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from kit import bearer, fresh_database, make_key, read_topic, running
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_events.envelope import decode_kafka_record
from clm_events.privacy import Tombstones
from clm_events.settings import ClmSettings
from clm_events.topics import Topics, ensure_topics
from clm_scoring import models, repository, transactions_file
from clm_scoring.config import Settings
from clm_scoring.domain.summary import Order, PurchaseHistory, history
from clm_scoring.jobs import Jobs, Scorer, today

# Ten customers: (days since the last purchase, purchase days, total spend), and the
# scores worked out by hand below.
POPULATION = [
    (0, 8, 1000),
    (10, 1, 100),
    (20, 5, 900),
    (30, 2, 300),
    (40, 3, 500),
    (50, 1, 200),
    (60, 4, 700),
    (70, 2, 400),
    (80, 1, 600),
    (90, 1, 800),
]
# np.quantile, linear, at 0.2/0.4/0.6/0.8 of ten sorted values sits at positions 1.8,
# 3.6, 5.4 and 7.2:
#   recency 0,10,...,90            -> 18, 36, 54, 72
#   frequency 1,1,1,1,2,2,3,4,5,8  -> 1, 1+0.6*1 = 1.6, 2+0.4*1 = 2.4, 4+0.2*1 = 4.2
#   monetary 100,200,...,1000      -> 280, 460, 640, 820
CUTS = {
    "recency": [18, 36, 54, 72],
    "frequency": [1, 1.6, 2.4, 4.2],
    "monetary": [280, 460, 640, 820],
}
# Quintile = 1 + cut points strictly below the value (a value on a cut point goes below:
# frequency 1 is F1); R is reversed (5 = most recent). Segment from the R x F map.
EXPECTED = [
    ("555", "Champions"),  # 0 days: R5; 8 > 4.2: F5; 1000 > 820: M5
    ("511", "New"),  # 10: R5; 1 = cut 1: F1; 100: M1
    ("455", "Loyal"),  # 20 > 18: R4; 5 > 4.2: F5; 900: M5
    ("432", "Potential loyalist"),  # 30: R4; 2 > 1.6: F3; 300 > 280: M2
    ("343", "Loyal"),  # 40 > 36: R3; 3 > 2.4: F4; 500 > 460: M3
    ("311", "About to sleep"),  # 50: R3; F1; 200: M1
    ("244", "At risk"),  # 60 > 54: R2; 4 < 4.2: F4; 700 > 640: M4
    ("232", "At risk"),  # 70: R2; 2: F3; 400: M2
    ("113", "Lost"),  # 80 > 72: R1; F1; 600: M3
    ("114", "Lost"),  # 90: R1; F1; 800: M4
]


def summary(days_ago: int, purchase_days: int, spend: int, as_of: date) -> PurchaseHistory:
    last = as_of - timedelta(days=days_ago)
    repeat = Decimal(spend // 2) if purchase_days > 1 else Decimal(0)
    return PurchaseHistory(
        first_day=last - timedelta(days=10 * (purchase_days - 1)),
        last_day=last,
        purchase_days=purchase_days,
        first_spend=Decimal(spend) - repeat,
        repeat_spend=repeat,
    )


async def get(client: Any, path: str, key: str) -> Any:
    r = await client.get(path, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_known_population_scores_as_worked_out_by_hand_and_moves_are_published(
    database_url: str, bootstrap_servers: str
) -> None:
    as_of = today()
    ids = [f"rfm-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(POPULATION))]
    async with (
        fresh_database(database_url) as url,
        running("clm_scoring", url, bootstrap_servers) as (client, runtime),
    ):
        key = await make_key(url, "read")
        jobs: Jobs = client._transport.app.state.jobs
        for _ in range(100):  # the start-up refit, over nobody
            if (await get(client, "/v1/model", key))["version"] is not None:
                break
            await asyncio.sleep(0.1)
        start = datetime.now(UTC)
        async with jobs.sessions() as session, session.begin():
            await repository.save_histories(
                session, {c: summary(*p, as_of) for c, p in zip(ids, POPULATION, strict=True)}
            )
        await jobs.recompute_cuts(trigger="test", as_of=as_of)
        assert await jobs.rescore_all(as_of=as_of) == (10, 10)
        cuts = await get(client, "/v1/rfm/cuts", key)
        scores = [await get(client, f"/v1/customers/{c}/score", key) for c in ids]
        first = await read_topic(bootstrap_servers, runtime.topics.scores, expect=10)
        grid = await get(client, "/v1/rfm", key)

        # The last customer buys again today: 0 days, 2 purchase days, 900 in all.
        moved_at = datetime.now(UTC)
        async with jobs.sessions() as session, session.begin():
            await repository.save_histories(session, {ids[9]: summary(0, 2, 900, as_of)})
        assert await jobs.rescore_all(as_of=as_of) == (10, 1)
        after = await read_topic(bootstrap_servers, runtime.topics.scores, expect=11)
        end = datetime.now(UTC) + timedelta(seconds=1)
        window = {"from": moved_at.isoformat(), "to": end.isoformat()}
        moves = (await client.get("/v1/rfm/moves", params=window, headers=bearer(key))).json()
        since = {"from": start.isoformat(), "to": end.isoformat()}
        entered = (await client.get("/v1/rfm/moves", params=since, headers=bearer(key))).json()

    # (1) Cut points, quintiles, cells and segments as worked out above.
    assert cuts["customers"] == 10 and cuts["as_of"] == as_of.isoformat()
    for measure, expected in CUTS.items():
        assert cuts[measure] == pytest.approx(expected, abs=1e-9)
    assert [(s["rfm"]["cell"], s["rfm"]["segment"]) for s in scores] == EXPECTED
    assert all(s["rfm"]["cuts_version"] == cuts["version"] for s in scores)
    assert [
        f"{s['rfm']['recency']}{s['rfm']['frequency']}{s['rfm']['monetary']}" for s in scores
    ] == [cell for cell, _ in EXPECTED]

    # (3) Every published score carries its RFM; the segment change is published.
    events = {e.subject: e for e in (decode_kafka_record(r.headers, r.value) for r in first)}
    assert [(events[c].data.rfm_cell, events[c].data.rfm_segment) for c in ids] == EXPECTED  # type: ignore[union-attr]
    # Partitions are read in no set order: the new score is the customer's second one.
    assert len(after) == 11
    theirs = [
        e for e in (decode_kafka_record(r.headers, r.value) for r in after) if e.subject == ids[9]
    ]
    assert len(theirs) == 2
    last = theirs[-1]
    assert (last.data.rfm_recency, last.data.rfm_frequency, last.data.rfm_monetary) == (5, 3, 5)  # type: ignore[union-attr]
    assert (last.data.rfm_cell, last.data.rfm_segment) == ("535", "Potential loyalist")  # type: ignore[union-attr]

    # (4) The grid: 25 cells, zeros included, adding up to the base and its revenue.
    cells = {(c["recency"], c["frequency"]): c for c in grid["cells"]}
    assert len(cells) == 25 and grid["cuts_version"] == cuts["version"]
    by_rf = Counter((int(cell[0]), int(cell[1])) for cell, _ in EXPECTED)
    assert {rf: c["customers"] for rf, c in cells.items() if c["customers"]} == by_rf
    assert grid["customers"] == sum(c["customers"] for c in cells.values()) == 10
    assert Decimal(grid["revenue"]) == sum(Decimal(c["revenue"]) for c in cells.values()) == 5500
    assert Decimal(cells[5, 5]["revenue"]) == 1000 and cells[1, 1]["customers"] == 2
    assert grid["unscored"] == 0

    # (5) Moves: over the last window, one customer from Lost to Potential loyalist;
    # since the start, everyone entered their current segment.
    assert moves["moves"] == [{"from": "Lost", "to": "Potential loyalist", "customers": 1}]
    final = Counter(seg for _, seg in EXPECTED[:9]) + Counter(["Potential loyalist"])
    assert {m["to"]: m["customers"] for m in entered["moves"]} == dict(final)
    assert all(m["from"] is None for m in entered["moves"])


def cdnow_histories() -> dict[str, PurchaseHistory]:
    """The CDNOW sample as shipped in the lifetimes wheel (its data file; never imported)."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "the lifetimes wheel is needed"
    sample = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_sample.txt"
    data = transactions_file.read(sample)
    out = {c: history(Order(d, a) for d, a in rows) for c, rows in data.items()}
    return {c: h for c, h in out.items() if h is not None}


async def test_cdnow_cut_points_equal_numpys_on_the_same_summary(
    database_url: str, bootstrap_servers: str
) -> None:
    as_of = date(1998, 6, 30)  # the end of the sample
    histories = cdnow_histories()
    async with fresh_database(database_url) as url:
        engine = create_async_engine(url)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        topics = Topics(prefix=f"s{uuid.uuid4().hex[:8]}.", partitions=2)
        await ensure_topics(bootstrap_servers, topics.all())
        scorer = Scorer(Settings(common=ClmSettings(database_url=url)), topics)
        jobs = Jobs(scorer, sessions, Tombstones(models.privacy_tombstones, b"k", timedelta(1)))
        try:
            due_at_start = await jobs.until_cuts_due()
            async with sessions() as session, session.begin():
                await repository.save_histories(session, histories)
            cuts = await jobs.recompute_cuts(trigger="test", as_of=as_of)
            due_after = await jobs.until_cuts_due()
            await jobs.refit(trigger="test", as_of=as_of)
            async with sessions() as session:
                after_refit = await repository.current_cuts(session)
            await jobs.rescore_all(as_of=as_of)
            s = models.scores.c
            async with sessions() as session:
                rows = (
                    await session.execute(
                        sa.select(s.customer_id, s.rfm_recency, s.rfm_frequency, s.rfm_monetary)
                    )
                ).all()
        finally:
            await engine.dispose()

    ids = sorted(histories)
    h = [histories[c] for c in ids]
    measures = {
        "recency": np.array([(as_of - x.last_day).days for x in h], dtype=float),
        "frequency": np.array([x.purchase_days for x in h], dtype=float),
        "monetary": np.array([float(x.first_spend + x.repeat_spend) for x in h]),
    }
    assert cuts["customers"] == len(ids) == 2357
    # The schedule computes cut points at once when there are none, then every interval;
    # a refit computes new ones.
    assert due_at_start == 0 and due_after > scorer.settings.rfm_interval - 60
    assert after_refit is not None and after_refit["trigger"] == "refit"
    assert after_refit["version"] == cuts["version"] + 1
    assert [after_refit[m] for m in measures] == [cuts[m] for m in measures]
    for name, values in measures.items():
        assert cuts[name] == list(np.quantile(values, [0.2, 0.4, 0.6, 0.8])), name

    # Each customer's quintile is numpy's too: searchsorted on the left puts a value
    # equal to a cut point below it; recency reversed.
    def quintiles(name: str) -> np.ndarray:
        return 1 + np.searchsorted(np.array(cuts[name]), measures[name], side="left")

    expected = np.stack([6 - quintiles("recency"), quintiles("frequency"), quintiles("monetary")])
    got = {r.customer_id: (r.rfm_recency, r.rfm_frequency, r.rfm_monetary) for r in rows}
    assert np.array_equal(np.array([got[c] for c in ids]).T, expected)
