"""Segment batch semantics with the official Python library: one bad message costs only
itself (dead-lettered with its index, replayable after a fix), and a request the library
sends again after a timeout publishes nothing twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from ingestkit import OnTopic
from kit import bearer, fresh_database, make_key, serving
from segment.analytics import Client


# A database of this module's own: the dead-letter store keys a row by its place on the
# dead-letter topic, and other modules' topics have the same places.
@pytest.fixture(scope="module")
async def own_database(database_url: str) -> AsyncIterator[str]:
    async with fresh_database(database_url) as url:
        yield url


@pytest.fixture(scope="module")
async def served(own_database: str, bootstrap_servers: str) -> AsyncIterator[tuple[str, Any]]:
    async with serving("clm_ingest", own_database, bootstrap_servers) as (url, runtime):
        yield url, runtime


@pytest.fixture(scope="module")
async def write_key(own_database: str) -> str:
    key: str = await make_key(own_database, "source", "web")
    return key


@pytest.fixture(scope="module")
async def read_key(own_database: str) -> str:
    key: str = await make_key(own_database, "read")
    return key


@pytest.fixture(scope="module")
async def admin_key(own_database: str) -> str:
    key: str = await make_key(own_database, "admin")
    return key


async def test_a_batch_with_one_bad_message_publishes_the_others_and_dead_letters_it(
    served: tuple[str, Any], write_key: str, read_key: str, admin_key: str, on_topic: OnTopic
) -> None:
    url, _ = served
    run = uuid.uuid4().hex[:6]
    cust = f"cust-{run}"
    errors: list[Any] = []

    def send() -> None:
        client = Client(write_key, host=url, upload_size=10, on_error=errors.append)
        client.track(cust, "Product Viewed", {"sku": "A"}, message_id=f"{run}-0")
        client.page(cust, properties={"url": "https://shop.example/a"}, message_id=f"{run}-1")
        # No currency: an order CLM cannot value.
        client.track(
            cust, "Order Completed", {"order_id": "7", "revenue": 30}, message_id=f"{run}-2"
        )
        client.track(cust, "Added to Cart", {"sku": "B"}, message_id=f"{run}-3")
        client.identify(cust, {"name": "Ada"}, message_id=f"{run}-4")
        client.flush()
        client.join()

    await asyncio.to_thread(send)
    assert errors == []  # the library saw the batch accepted: it will not resend it

    good = await on_topic("web", [f"{run}-{i}" for i in (0, 1, 3, 4)])
    assert sorted(e["id"] for e in good) == [f"{run}-{i}" for i in (0, 1, 3, 4)]
    assert await on_topic("purchase", [f"{run}-2"], timeout=0) == []

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        [dead] = await _dead_letters(http, read_key, f'"{run}-2"')
        assert (dead["source_topic"], dead["source_offset"], dead["group"]) == (
            "/v1/batch",
            2,
            "http",
        )
        assert dead["reason"] == "invalid event: properties.currency: field required"
        assert dead["key"] == cust
        assert json.loads(dead["payload"])["event"] == "Order Completed"  # as the sender wrote it

        # The sender's bug is fixed: replay the message with its currency.
        fixed = json.loads(dead["payload"])
        fixed["properties"]["currency"] = "EUR"
        replay = await http.post(
            f"/v1/deadletters/{dead['id']}/replay",
            json={"payload": json.dumps(fixed)},
            headers=bearer(admin_key),
        )
        assert replay.status_code == 202, replay.text
    [order] = await on_topic("purchase", [f"{run}-2"])
    assert (order["subject"], order["data"]["amount"], order["data"]["currency"]) == (
        cust,
        "30",
        "EUR",
    )


async def test_the_response_lists_each_dead_lettered_message_with_index_path_and_reason(
    served: tuple[str, Any], write_key: str
) -> None:
    url, _ = served
    run = uuid.uuid4().hex[:6]
    batch = [
        {"type": "track", "event": "Product Viewed", "userId": "c", "messageId": f"{run}-0"},
        {"type": "track", "event": "Product Viewed", "userId": "c"},  # no messageId
        {"type": "merge", "userId": "c", "messageId": f"{run}-2"},
        "not a message",
        {"type": "group", "userId": "c", "groupId": "acme", "messageId": f"{run}-4"},
    ]
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
    assert answer.status_code == 202
    assert answer.json() == {
        "accepted": 2,  # the tracked event, and the group call (which keeps nothing)
        "deadlettered": [
            {"index": 1, "path": "messageId", "reason": "field required"},
            {
                "index": 2,
                "path": "type",
                "reason": "unsupported Segment call 'merge'; supported: "
                "track, identify, page, screen, group, alias",
            },
            {"index": 3, "path": "", "reason": "message must be a JSON object"},
        ],
    }


async def _dead_letters(http: httpx.AsyncClient, key: str, needle: str) -> list[dict[str, Any]]:
    """The stored dead letters whose payload holds `needle`, once there are any."""
    for _ in range(100):
        listed = await http.get("/v1/deadletters", params={"limit": 500}, headers=bearer(key))
        found = [d for d in listed.json()["deadletters"] if needle in d["payload"]]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dead letter holding {needle}")


@asynccontextmanager
async def response_lost_once(upstream: str, hold: float) -> AsyncIterator[tuple[str, list[int]]]:
    """A proxy in front of ingest that forwards the first request but withholds ingest's
    answer for `hold` seconds and then drops the connection, as a timeout on a slow
    network does; later requests pass. Yields its URL and the status of each answer."""
    target = urlsplit(upstream)
    statuses: list[int] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        pipe = asyncio.create_task(_pipe(reader, up_writer))
        try:
            while head := await up_reader.read(65536):
                if head.startswith(b"HTTP/1.1 "):
                    statuses.append(int(head[9:12]))
                if first:
                    await asyncio.sleep(hold)  # past the client's timeout: it gives up
                    return
                writer.write(head)
                await writer.drain()
        finally:
            pipe.cancel()
            writer.close()
            up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", statuses
    finally:
        server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def test_a_request_the_library_retries_after_a_timeout_publishes_nothing_twice(
    served: tuple[str, Any], write_key: str, on_topic: OnTopic
) -> None:
    url, _ = served
    run = uuid.uuid4().hex[:6]
    async with response_lost_once(url, hold=2.0) as (proxy, statuses):

        def send() -> None:
            client = Client(write_key, host=proxy, timeout=1, max_retries=3, upload_size=10)
            client.track(f"cust-{run}", "Product Viewed", {"sku": "A"}, message_id=f"{run}-0")
            client.identify(f"cust-{run}", {}, anonymous_id=f"anon-{run}", message_id=f"{run}-1")
            client.track(f"cust-{run}", "Order Completed", message_id=f"{run}-2",
                         properties={"order_id": run, "revenue": 5, "currency": "EUR"})  # fmt: skip
            client.flush()
            client.join()

        await asyncio.to_thread(send)

    assert statuses == [202, 202]  # ingest took the request twice
    web = await on_topic("web", [f"{run}-0", f"{run}-1", f"{run}-1:link"])
    purchases = await on_topic("purchase", [f"{run}-2"])
    assert sorted(e["id"] for e in web + purchases) == [
        f"{run}-0",
        f"{run}-1",
        f"{run}-1:link",
        f"{run}-2",
    ]  # and published it once
