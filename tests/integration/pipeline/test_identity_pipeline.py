"""One customer in every service, through the whole pipeline with the official Segment
library (ingest over HTTP, stage engine, scoring, on the real broker and database): a
visitor's anonymous page views, product views and guest order, the identify that names
them and their later orders, sent in a random order each, give the customer the history
and scores of a twin whose every event carried the known id from the start."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from kit import bearer, fresh_database, make_key, running, serving, until
from pipelinekit import stage_engine
from segment.analytics import Client

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=150)
# (day, call, args): one visitor's events; "ANON" marks what a visitor sends before
# signing up, which the twin sends under its known id.
VISIT: list[tuple[float, str, dict[str, Any]]] = [
    (0.0, "page", {"name": "Home", "properties": {"url": "https://shop.example/"}}),
    (0.5, "track", {"event": "Product Viewed", "properties": {"sku": "boot-1"}}),
    (1.0, "track", {"event": "Product Viewed", "properties": {"sku": "boot-2"}}),
    (1.5, "track", {"event": "Order Completed", "properties": {"order_id": "guest"}}),
    (3.0, "identify", {"traits": {"email": "ada@example.com", "name": "Ada"}}),
    (20.0, "track", {"event": "Order Completed", "properties": {"order_id": "second"}}),
    (60.0, "track", {"event": "Order Completed", "properties": {"order_id": "third"}}),
]
ANONYMOUS = 4  # the first four are the visitor's before the identify


@dataclass
class Stack:
    segment: Client
    stages: httpx.AsyncClient
    scoring: httpx.AsyncClient
    read: dict[str, str]

    async def send(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        for call, kwargs in calls:
            await asyncio.to_thread(getattr(self.segment, call), **kwargs)

    async def get(self, client: httpx.AsyncClient, path: str) -> Any:
        r = await client.get(path, headers=self.read)
        return r.json() if r.status_code == 200 else None


@asynccontextmanager
async def stack(database_url: str, bootstrap: str) -> AsyncIterator[Stack]:
    prefix = f"id{uuid.uuid4().hex[:8]}."
    async with (
        stage_engine(database_url, bootstrap, prefix) as (stages, _),
        running("clm_scoring", database_url, bootstrap, topic_prefix=prefix) as (scoring, _),
        serving("clm_ingest", database_url, bootstrap, topic_prefix=prefix) as (url, _),
    ):
        write_key = await make_key(database_url, "source", "shop")
        segment = Client(write_key, host=url, sync_mode=True, max_retries=0)
        yield Stack(segment, stages, scoring, bearer(await make_key(database_url, "read")))


def _calls(customer: str, anonymous_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The visit as Segment calls: the first ones under `anonymous_id` when there is one,
    the identify with both ids, the rest under the customer id."""
    calls = []
    for n, (day, call, args) in enumerate(VISIT):
        kwargs = {**args, "timestamp": START + timedelta(days=day)}
        if call == "track" and args["event"] == "Order Completed":
            props = {**args["properties"], "revenue": 40.0 + n, "currency": "EUR"}
            kwargs["properties"] = {**props, "order_id": f"{customer}-{props['order_id']}"}
        if anonymous_id is not None and n < ANONYMOUS:
            kwargs["anonymous_id"] = anonymous_id
        else:
            kwargs["user_id"] = customer
            if call == "identify" and anonymous_id is not None:
                kwargs["anonymous_id"] = anonymous_id
        calls.append((call, kwargs))
    return calls


def _history(body: Any) -> list[tuple[Any, ...]]:
    rows = (body or {}).get("transitions", [])
    return [(t["at"], t["from_stage"], t["to_stage"], t["cause"]) for t in rows]


def _score(body: Any) -> tuple[Any, ...] | None:
    if body is None:
        return None
    return (body["clv"], body["churn_probability"], body["summary"]["repeat_purchases"])


async def test_a_visitor_merged_in_any_order_has_the_history_of_a_known_twin(
    migrated: str, bootstrap_servers: str
) -> None:
    # A database of its own: the stage engine's timer would move these customers in the
    # stacks of later tests, which share the test database.
    async with fresh_database(migrated) as db, stack(db, bootstrap_servers) as s:
        pairs = []
        for seed in range(4):
            tag = uuid.uuid4().hex[:6]
            known, twin, anon = f"ada-{tag}", f"twin-{tag}", f"anon-{tag}"
            calls = _calls(known, anon)
            random.Random(seed).shuffle(calls)  # the identify anywhere among the events
            await s.send(calls)
            await s.send(_calls(twin, None))
            pairs.append((known, twin, anon))

        for known, twin, anon in pairs:

            async def same_history(known: str = known, twin: str = twin) -> bool:
                ours = _history(await s.get(s.stages, f"/v1/customers/{known}/transitions"))
                theirs = _history(await s.get(s.stages, f"/v1/customers/{twin}/transitions"))
                return bool(theirs) and ours == theirs

            await until(same_history, f"{known}'s history to equal {twin}'s")
            merged = await s.get(s.stages, f"/v1/customers/{anon}")
            assert merged["customer_id"] == known and merged["requested_id"] == anon
            assert [x["anonymous_id"] for x in merged["linked_ids"]] == [anon]
            assert merged["facts"]["purchases_total"] == 3
            assert merged["facts"]["tracked_total"] == {"Product Viewed": 2}

            async def same_score(known: str = known, twin: str = twin) -> bool:
                ours = _score(await s.get(s.scoring, f"/v1/customers/{known}/score"))
                theirs = _score(await s.get(s.scoring, f"/v1/customers/{twin}/score"))
                return theirs is not None and ours == theirs

            await until(same_score, f"{known}'s score to equal {twin}'s")
