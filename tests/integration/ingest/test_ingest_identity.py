"""Identity resolution at the gate: a visitor's anonymous id is linked to the customer
they become (identify with both ids, alias, or an identity.linked from a direct producer),
later events of the anonymous id carry the customer's id, and the guards refuse the
links Segment warns about, counting each refusal."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from ingestkit import OnTopic, events_with_ids
from kit import bearer, produce, serving
from segment.analytics import Client


async def test_page_views_then_identify_then_an_anonymous_purchase_end_under_the_known_id(
    served: tuple[str, Any], write_key: str, read_key: str, on_topic: OnTopic
) -> None:
    url, _ = served
    run = uuid.uuid4().hex[:6]
    anon, cust = f"anon-{run}", f"cust-{run}"
    segment = Client(write_key, host=url, sync_mode=True, max_retries=0)

    def visit() -> None:
        for i, path in enumerate(["/", "/shoes"]):
            segment.page(anonymous_id=anon, properties={"url": f"https://shop.example{path}"},
                         message_id=f"{run}-page-{i}")  # fmt: skip
        segment.identify(cust, {"email": "ada@example.com"}, anonymous_id=anon,
                         message_id=f"{run}-identify")  # fmt: skip
        # The shop's checkout still only knows the browser's id.
        segment.track(anonymous_id=anon, event="Order Completed", message_id=f"{run}-order",
                      properties={"order_id": run, "revenue": 80, "currency": "EUR"})  # fmt: skip

    await asyncio.to_thread(visit)

    pages = await on_topic("web", [f"{run}-page-0", f"{run}-page-1"])
    assert {(e["subject"], e["anonymousid"]) for e in pages} == {(anon, anon)}  # kept as sent
    [identified, link] = sorted(
        await on_topic("web", [f"{run}-identify", f"{run}-identify:link"]), key=lambda e: e["id"]
    )
    assert (identified["type"], identified["subject"]) == ("web.identified", cust)
    assert (link["type"], link["subject"], link["data"]) == (
        "identity.linked",
        cust,
        {"anonymous_id": anon},
    )
    [order] = await on_topic("purchase", [f"{run}-order"])
    assert (order["subject"], order["anonymousid"]) == (cust, anon)  # nothing lost

    async with httpx.AsyncClient(base_url=url) as http:
        of_anon = (await http.get(f"/v1/identities/{anon}", headers=bearer(read_key))).json()
        of_cust = (await http.get(f"/v1/identities/{cust}", headers=bearer(read_key))).json()
        stranger = await http.get(f"/v1/identities/{run}-nobody", headers=bearer(read_key))
        denied = await http.get(f"/v1/identities/{cust}", headers=bearer(write_key))
    assert of_anon["customer_id"] == of_cust["customer_id"] == cust
    assert [i["anonymous_id"] for i in of_cust["linked_ids"]] == [anon]
    assert of_cust["linked_ids"][0]["event_id"] == f"{run}-identify:link"
    assert stranger.json() == {"id": f"{run}-nobody", "customer_id": f"{run}-nobody",
                               "linked_ids": []}  # fmt: skip
    assert denied.status_code == 403  # a source key reads nothing


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_refused_links_are_refused_counted_and_the_identify_still_published(
    migrated: str, bootstrap_servers: str, write_key: str, read_key: str
) -> None:
    run = uuid.uuid4().hex[:6]
    a1, a2, a3 = (f"anon{i}-{run}" for i in (1, 2, 3))
    c1, c2 = f"cust1-{run}", f"cust2-{run}"

    def identify(n: int, user: str, anonymous: str) -> dict[str, Any]:
        return {"type": "identify", "messageId": f"{run}-{n}", "userId": user,
                "anonymousId": anonymous, "traits": {}}  # fmt: skip

    batch = [
        identify(0, c1, a1),  # linked
        identify(1, c2, a1),  # a1 is c1's: refused, c2 still identified
        identify(2, c1, "anonymous"),  # a placeholder: refused
        identify(3, c1, a2),  # linked: c1's second and last anonymous id
        identify(4, c1, a3),  # over the limit: refused
        identify(5, c1, a1),  # the same link again: nothing changes, still published
        {"type": "alias", "messageId": f"{run}-6", "previousId": c1, "userId": "0"},
    ]
    async with serving("clm_ingest", migrated, bootstrap_servers, identity_max_anonymous_ids=2) as (
        url,
        runtime,
    ):
        async with httpx.AsyncClient(base_url=url) as http:
            before = (await http.get("/metrics")).text
            answer = await http.post("/v1/batch", json={"batch": batch}, auth=(write_key, ""))
            after = (await http.get("/metrics")).text
            of_c1 = (await http.get(f"/v1/identities/{c1}", headers=bearer(read_key))).json()
        expected = [f"{run}-{n}" for n in range(6)] + [f"{run}-{n}:link" for n in (0, 3, 5)]
        web = await events_with_ids(
            bootstrap_servers, runtime.topics.domain("web"), expected, prefix=run
        )

    assert answer.status_code == 202
    assert answer.json()["accepted"] == 7
    assert answer.json()["links_refused"] == [
        {"index": 1, "reason": "already_linked",
         "detail": "the anonymous id is already linked to another customer"},
        {"index": 2, "reason": "blocked_id", "detail": answer.json()["links_refused"][1]["detail"]},
        {"index": 4, "reason": "customer_limit",
         "detail": "the customer already has the most anonymous ids allowed"},
        {"index": 6, "reason": "blocked_id", "detail": answer.json()["links_refused"][1]["detail"]},
    ]  # fmt: skip
    assert sorted(e["id"] for e in web) == sorted(expected)  # no refused link, none twice
    assert [e["subject"] for e in web if e["id"] == f"{run}-1"] == [c2]  # a plain identify
    assert [i["anonymous_id"] for i in of_c1["linked_ids"]] == [a1, a2]

    def delta(outcome: str, reason: str = "") -> float:
        name = "clm_ingest_identity_links_total"
        return _metric(after, name, outcome=outcome, reason=reason) - _metric(
            before, name, outcome=outcome, reason=reason
        )

    assert delta("linked") == 2 and delta("unchanged") == 1
    assert delta("refused", "already_linked") == 1
    assert delta("refused", "blocked_id") == 2
    assert delta("refused", "customer_limit") == 1


async def test_links_from_the_inbound_topic_rewrite_later_events_like_those_over_http(
    ingest: tuple[httpx.AsyncClient, Any], bootstrap_servers: str
) -> None:
    _, runtime = ingest
    run = uuid.uuid4().hex[:6]
    anon, cust = f"anon-{run}", f"cust-{run}"

    def event(n: int, type_: str, subject: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"specversion": "1.0", "id": f"{run}-{n}", "source": "app", "type": type_,
                "subject": subject, "time": "2026-11-20T10:15:00Z", "data": data}  # fmt: skip

    order = {"order_id": run, "amount": "12.00", "currency": "EUR"}
    await produce(
        bootstrap_servers,
        runtime.topics.inbound,
        [
            event(0, "web.tracked", anon, {"name": "Product Viewed"}),
            event(1, "identity.linked", cust, {"anonymous_id": anon}),
            event(2, "purchase.completed", anon, order),
            event(3, "identity.linked", cust, {"anonymous_id": "undefined"}),  # refused
            event(4, "web.tracked", anon, {"name": "Product Viewed"}),
        ],
        key=lambda _: anon.encode(),  # one partition: in the order sent
    )
    web = await events_with_ids(
        bootstrap_servers, runtime.topics.domain("web"), [f"{run}-{n}" for n in (0, 1, 4)],
        prefix=run,
    )  # fmt: skip
    [purchase] = await events_with_ids(
        bootstrap_servers, runtime.topics.domain("purchase"), [f"{run}-2"]
    )
    assert sorted((e["id"], e["subject"]) for e in web) == [
        (f"{run}-0", anon),  # before the link: the services merge it when the link comes
        (f"{run}-1", cust),
        (f"{run}-4", cust),
    ]
    assert (purchase["subject"], purchase["anonymousid"]) == (cust, anon)
