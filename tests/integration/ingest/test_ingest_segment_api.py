"""Segment compatibility: the official Segment Python library, unchanged, pointed at a
real ingest server; and the single-call routes with the write key as Basic username."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from kit import SERVICES, make_key, read_topic
from segment.analytics import Client
from segment.analytics.request import APIError

from clm_devstack.procs import free_port
from clm_events.settings import ClmSettings
from clm_ingest.config import Settings
from clm_ingest.main import create_app

assert "clm_ingest" in SERVICES


class Server:
    """The ingest app under uvicorn on a free port, in a thread with its own event loop."""

    def __init__(self, database_url: str, bootstrap: str) -> None:
        self.settings = Settings(
            group_id=f"g-segment-{time.time_ns()}",
            common=ClmSettings(
                database_url=database_url,
                kafka_bootstrap_servers=bootstrap,
                topic_prefix=f"seg{time.time_ns()}.",
                topic_partitions=2,
                log_json=False,
            ),
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A factory: aiokafka clients must be created inside the server's event loop.
        config = uvicorn.Config(
            lambda: create_app(self.settings),
            factory=True,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("ingest did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(migrated: str, bootstrap_servers: str) -> Iterator[Server]:
    with Server(migrated, bootstrap_servers) as s:
        yield s


@pytest.fixture
async def write_key(migrated: str) -> AsyncIterator[str]:
    yield await make_key(migrated, "source", "web")


def topic(server: Server, event_type: str) -> str:
    return f"{server.settings.common.topic_prefix}events.{event_type.split('.')[0]}"


async def test_the_segment_library_lands_track_identify_page_and_batches_as_clm_events(
    server: Server, write_key: str, bootstrap_servers: str
) -> None:
    sync = Client(write_key, host=server.url, sync_mode=True, max_retries=0)

    def calls() -> None:
        sync.identify("cust-7", {"email": "ada@example.com", "timezone": "Europe/Paris"})
        sync.page("cust-7", name="Pricing", properties={"url": "https://shop.example/pricing"})
        sync.track(
            "cust-7",
            "Order Completed",
            {"order_id": "5001", "revenue": 42.5, "currency": "EUR", "products": []},
            message_id="seg-order-5001",
        )
        # Queued, gzip-compressed and sent as one /v1/batch by the library's own thread.
        batched = Client(write_key, host=server.url, gzip=True, upload_size=10)
        batched.track("cust-8", "Signed Up", {"email": "bob@example.com"})
        batched.track("cust-8", "Order Refunded", {"order_id": "9", "total": 5, "currency": "EUR"})
        batched.flush()
        batched.join()

    await asyncio.to_thread(calls)

    web = await read_topic(bootstrap_servers, topic(server, "web.page_viewed"), expect=3)
    purchases = await read_topic(bootstrap_servers, topic(server, "purchase.completed"), expect=2)
    events = [json.loads(r.value) for r in web + purchases]
    by_type = {e["type"]: e for e in events}
    assert sorted(by_type) == [
        "purchase.completed",
        "purchase.refunded",
        "web.identified",
        "web.page_viewed",
        "web.signed_up",
    ]
    assert all(e["source"] == "web" for e in events)  # the key's source
    order = by_type["purchase.completed"]
    assert (order["id"], order["subject"], order["data"]["amount"]) == (
        "seg-order-5001",
        "cust-7",
        "42.5",
    )
    assert by_type["web.identified"]["data"]["traits"]["timezone"] == "Europe/Paris"
    assert by_type["web.page_viewed"]["data"]["url"] == "https://shop.example/pricing"
    assert by_type["web.signed_up"]["subject"] == "cust-8"


async def test_the_segment_library_sees_an_unmapped_event_refused(
    server: Server, write_key: str
) -> None:
    sync = Client(write_key, host=server.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as refused:
        await asyncio.to_thread(sync.track, "cust-7", "Product Viewed", {"sku": "x"})
    assert refused.value.status == 422
    error = refused.value.response.json()["errors"][0]
    assert error["index"] == 0 and error["path"] == "event"
    assert "'Order Completed'" in error["reason"]


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def test_single_segment_calls_take_the_write_key_as_basic_username(
    ingest: tuple[httpx.AsyncClient, Any], migrated: str, bootstrap_servers: str
) -> None:
    client, runtime = ingest
    key = await make_key(migrated, "source", "app")
    track = {
        "userId": "cust-9",
        "event": "Order Completed",
        "messageId": "m-9",
        "timestamp": "2026-11-20T10:15:00Z",
        "properties": {"order_id": 9, "total": "19.99", "currency": "USD"},
    }
    response = await client.post("/v1/track", json=track, headers=basic(key))
    assert (response.status_code, response.json()) == (202, {"accepted": 1})
    identify = {"userId": "cust-9", "messageId": "m-10", "traits": {"name": "Ada"}}
    assert (await client.post("/v1/identify", json=identify, headers=basic(key))).status_code == 202
    page = {"userId": "cust-9", "messageId": "m-11", "properties": {"title": "Home"}}
    missing_url = await client.post("/v1/page", json=page, headers=basic(key))
    assert missing_url.status_code == 422
    assert missing_url.json()["errors"] == [{"path": "properties.url", "reason": "field required"}]
    assert (await client.post("/v1/track", json=track, headers=basic("wrong"))).status_code == 401

    purchases = await read_topic(
        bootstrap_servers, runtime.topics.domain("purchase.completed"), expect=1
    )
    app_events = [e for e in (json.loads(r.value) for r in purchases) if e["source"] == "app"]
    assert [(e["id"], e["data"]["order_id"], e["data"]["amount"]) for e in app_events] == [
        ("m-9", "9", "19.99")
    ]
    web = await read_topic(bootstrap_servers, runtime.topics.domain("web.identified"), expect=1)
    app_web = [json.loads(r.value) for r in web if json.loads(r.value)["source"] == "app"]
    assert [e["type"] for e in app_web] == ["web.identified"]
