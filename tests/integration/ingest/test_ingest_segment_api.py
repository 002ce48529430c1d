"""Segment compatibility: the official Segment Python library, unchanged, pointed at a
real ingest server, for every call of the Segment spec; and the single-call routes as a
browser's analytics.js and curl use them."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
from ingestkit import OnTopic
from segment.analytics import Client


def ids(prefix: str, *names: str) -> dict[str, str]:
    return {n: f"{prefix}-{n}" for n in names}


async def test_every_call_of_the_python_library_is_accepted_and_mapped(
    served: tuple[str, Any], write_key: str, on_topic: OnTopic
) -> None:
    url, _ = served
    run = uuid.uuid4().hex[:6]
    m = ids(run, "identify", "order", "viewed", "page", "screen", "group", "alias", "signup")
    m |= ids(run, "refund")
    cust = f"cust-{run}"
    errors: list[Any] = []
    sync = Client(write_key, host=url, sync_mode=True, max_retries=0, on_error=errors.append)

    def calls() -> None:
        sync.identify(cust, {"email": "ada@example.com"}, message_id=m["identify"])
        sync.track(
            cust,
            "Order Completed",
            {"order_id": "5001", "revenue": 42.5, "currency": "EUR", "products": []},
            message_id=m["order"],
        )
        sync.track(
            cust, "Product Viewed", {"sku": "SKU-1", "category": "shoes"}, message_id=m["viewed"]
        )
        sync.page(cust, name="Pricing", properties={"url": "https://shop.example/pricing"},
                  message_id=m["page"])  # fmt: skip
        sync.screen(cust, name="Basket", properties={"items": 2}, message_id=m["screen"])
        sync.group(cust, "acme", {"plan": "team"}, message_id=m["group"])
        sync.alias(f"old-{run}", cust, message_id=m["alias"])
        # Queued, gzip-compressed and sent as one /v1/batch by the library's own thread.
        batched = Client(write_key, host=url, gzip=True, upload_size=10)
        batched.track(cust, "Signed Up", {"email": "ada@example.com"}, message_id=m["signup"])
        batched.track(
            cust, "Order Refunded", {"order_id": "9", "total": 5, "currency": "EUR"},
            message_id=m["refund"],
        )  # fmt: skip
        batched.flush()
        batched.join()

    await asyncio.to_thread(calls)
    assert errors == []

    web = await on_topic("web", [m[n] for n in ("identify", "viewed", "page", "screen", "alias")])
    web += await on_topic("web", [m["signup"]])
    assert await on_topic("web", [m["group"]], timeout=0) == []  # a group publishes nothing
    purchases = await on_topic("purchase", [m["order"], m["refund"]])
    by_id = {e["id"]: e for e in web + purchases}
    assert len(by_id) == len(web + purchases)  # none twice
    assert {k: by_id[v]["type"] for k, v in m.items() if v in by_id} == {
        "identify": "web.identified",
        "order": "purchase.completed",
        "viewed": "web.tracked",
        "page": "web.page_viewed",
        "screen": "web.screen_viewed",
        "alias": "identity.linked",
        "signup": "web.signed_up",
        "refund": "purchase.refunded",
    }  # and group: nothing
    assert all(e["source"] == "web" and e["subject"] == cust for e in by_id.values())
    assert by_id[m["order"]]["data"]["amount"] == "42.5"
    assert by_id[m["viewed"]]["data"] == {
        "name": "Product Viewed",
        "properties": {"sku": "SKU-1", "category": "shoes"},
    }
    assert by_id[m["screen"]]["data"] == {"name": "Basket", "properties": {"items": 2}}
    assert by_id[m["alias"]]["data"] == {"anonymous_id": f"old-{run}"}
    assert by_id[m["page"]]["data"]["url"] == "https://shop.example/pricing"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def test_single_calls_take_the_write_key_as_basic_username_or_in_the_body(
    served: tuple[str, Any], write_key: str, read_key: str, on_topic: OnTopic
) -> None:
    url, _ = served
    run = uuid.uuid4().hex[:6]
    track = {
        "userId": f"cust-{run}",
        "event": "Order Completed",
        "messageId": f"{run}-order",
        "timestamp": "2026-11-20T10:15:00Z",
        "properties": {"order_id": 9, "total": "19.99", "currency": "USD"},
    }
    # What analytics.js sends from a browser: text/plain, the write key in the body, the
    # call's one-letter path, no Authorization header.
    page = {
        "type": "page",
        "anonymousId": f"anon-{run}",
        "messageId": f"{run}-page",
        "writeKey": write_key,
        "sentAt": "2026-11-20T10:15:01Z",
        "properties": {"url": "https://shop.example/", "title": "Home"},
        "context": {"userAgent": "Mozilla/5.0", "library": {"name": "analytics.js"}},
        "integrations": {},
        "_metadata": {"bundled": ["Segment.io"]},
    }
    async with httpx.AsyncClient(base_url=url) as http:
        sent = await http.post("/v1/track", json=track, headers=basic(write_key))
        assert (sent.status_code, sent.json()) == (202, {"accepted": 1})
        browser = await http.post(
            "/v1/p", content=json.dumps(page), headers={"Content-Type": "text/plain"}
        )
        assert (browser.status_code, browser.json()) == (202, {"accepted": 1})
        assert browser.headers["Access-Control-Allow-Origin"] == "*"

        no_url = {"userId": "c", "messageId": f"{run}-no-url", "properties": {"title": "Home"}}
        kept = await http.post("/v1/page", json=no_url, headers=basic(write_key))
        assert (kept.status_code, kept.json()) == (
            202,
            {
                "accepted": 0,
                "deadlettered": [{"path": "properties.url", "reason": "field required"}],
            },
        )
        # Refused whole: not authenticated, not JSON, too large.
        assert (await http.post("/v1/track", json=track, headers=basic("wrong"))).status_code == 401
        keyless = await http.post("/v1/t", json=track)
        assert keyless.status_code == 401 and "writeKey" in keyless.json()["detail"]
        wrong_role = await http.post("/v1/i", json={**track, "writeKey": read_key})
        assert wrong_role.status_code == 403
        garbage = await http.post("/v1/track", content=b"{nope", headers=basic(write_key))
        assert garbage.status_code == 400
        big = {**track, "properties": {"note": "x" * 40_000}}
        assert (await http.post("/v1/track", json=big, headers=basic(write_key))).status_code == 413

    [order] = await on_topic("purchase", [f"{run}-order"])
    assert (order["data"]["order_id"], order["data"]["amount"]) == ("9", "19.99")
    [viewed] = await on_topic("web", [f"{run}-page"])
    assert (viewed["type"], viewed["subject"]) == ("web.page_viewed", f"anon-{run}")
    assert viewed["data"] == {"url": "https://shop.example/", "title": "Home",
                              "anonymous_id": f"anon-{run}"}  # fmt: skip
