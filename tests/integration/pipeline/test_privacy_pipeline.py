"""An erasure through the whole pipeline (the four services over HTTP, the official
Segment library, the real broker and database): a customer with events on every domain
topic, a stage history, scores, a delivered and a pending action and a dead letter is
exported, then erased by email. Afterwards a dump of the whole database names neither
their ids, nor their email, nor their name; stage counts lost only them, flows and trigger
stats kept their counts; replaying their events from the topics and their dead letter
from the dead-letter topic leaves nothing; the pending action is never sent."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from kit import bearer, fresh_database, make_key, pg_dump, serving, traces, until
from segment.analytics import Client

from clm_events.producer import Message, Producer
from clm_ingest.deadletter import replay_record
from clm_ingest.domain.segment import SegmentMapping

ALLOW_LOCAL = {"webhook_allowed_networks": ["127.0.0.1/32"]}
DELAY = 15  # seconds before the delayed action is due: well within the test


@dataclass
class Stack:
    ingest_url: str
    ingest: httpx.AsyncClient
    stages: httpx.AsyncClient
    scoring: httpx.AsyncClient
    campaigns: httpx.AsyncClient
    runtimes: list[Any]
    admin: dict[str, str]
    keys: dict[str, str]  # source -> key

    async def get(self, client: httpx.AsyncClient, path: str, **params: Any) -> Any:
        r = await client.get(path, params=params, headers=self.admin)
        return r.json() if r.status_code == 200 else None

    async def events(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            key = self.keys[e["source"].split("/")[0]]
            r = await self.ingest.post("/v1/events", json=e, headers=bearer(key))
            assert r.status_code == 202, r.text


@asynccontextmanager
async def stack(database_url: str, bootstrap: str) -> AsyncIterator[Stack]:
    prefix = f"pv{uuid.uuid4().hex[:8]}."
    fast = {"topic_prefix": prefix}
    async with (
        serving("clm_stage_engine", database_url, bootstrap, timer_interval=0.2,
                settle_seconds=2.0, **fast) as (stages_url, stages_rt),
        serving("clm_scoring", database_url, bootstrap, **fast) as (scoring_url, scoring_rt),
        serving("clm_campaigns", database_url, bootstrap, **ALLOW_LOCAL, **fast) as (
            campaigns_url, campaigns_rt),
        serving("clm_ingest", database_url, bootstrap, stage_engine_url=stages_url,
                scoring_url=scoring_url, campaigns_url=campaigns_url, **fast) as (
            ingest_url, ingest_rt),
        httpx.AsyncClient(base_url=ingest_url) as ingest,
        httpx.AsyncClient(base_url=stages_url) as stages,
        httpx.AsyncClient(base_url=scoring_url) as scoring,
        httpx.AsyncClient(base_url=campaigns_url) as campaigns,
    ):  # fmt: skip
        keys = {s: await make_key(database_url, "source", s) for s in ("web", "billing", "support")}
        yield Stack(
            ingest_url, ingest, stages, scoring, campaigns,
            [ingest_rt, stages_rt, scoring_rt, campaigns_rt],
            bearer(await make_key(database_url, "admin")), keys,
        )  # fmt: skip


def _event(kind: str, subject: str, data: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,  # producers' ids must not carry personal data
        "source": source,
        "type": kind,
        "subject": subject,
        "time": datetime.now(UTC).isoformat(),
        "data": data,
    }


def _new_id(value: bytes) -> bytes:
    event = json.loads(value)
    return json.dumps({**event, "id": uuid.uuid4().hex}).encode()


async def _trigger(s: Stack, hook: str, **extra: Any) -> str:
    body = {
        "name": f"thanks {uuid.uuid4().hex[:6]}",
        "on": {"kind": "event", "event_type": "purchase.completed"},
        "action": {
            "channel": "webhook",
            "url": hook,
            "payload": '{"to": {{ customer.traits.email | tojson }}, '
            '"name": {{ customer.traits.name | tojson }}}',
        },
        **extra,
    }
    r = await s.campaigns.post("/v1/triggers", json=body, headers=s.admin)
    assert r.status_code == 201, r.text
    trigger_id: str = r.json()["id"]
    return trigger_id


async def _settled(bootstrap: str, runtimes: Sequence[Any]) -> bool:
    """Every consumer group of the services committed the end of every partition it
    reads. (A consumer naming the group but subscribing to nothing reads its offsets:
    the admin client cannot decode the local broker's answer.)"""
    for runner in [c for rt in runtimes for c in rt.consumers]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=runner.group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in runner._topics
                   for p in consumer.partitions_for_topic(t) or ()]  # fmt: skip
            assert tps, f"no partitions known for {runner.group_id}"
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                if ends[tp] and (await consumer.committed(tp) or 0) < ends[tp]:
                    return False
        finally:
            await consumer.stop()
    return True


async def _all_messages(bootstrap: str, topics: Sequence[str]) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += records
        return out
    finally:
        await consumer.stop()


async def test_an_erased_customer_leaves_no_trace_and_the_statistics_still_add_up(
    migrated: str, bootstrap_servers: str, receiver: Any
) -> None:
    tag = uuid.uuid4().hex[:10]
    person, visitor, email, name = f"cust{tag}", f"anon{tag}", f"e{tag}@example.com", f"N{tag}"
    kept = f"kept{tag}"
    async with fresh_database(migrated) as db, stack(db, bootstrap_servers) as s:
        now_trigger = await _trigger(s, receiver.url)
        later_trigger = await _trigger(s, receiver.url, delay_seconds=DELAY)
        segment = Client(s.keys["web"], host=s.ingest_url, sync_mode=True,
                         max_retries=0)  # fmt: skip

        def sign_in() -> None:
            segment.page(anonymous_id=visitor, properties={"url": "https://shop.example/"})
            segment.identify(person, {"email": email, "name": name}, anonymous_id=visitor)

        def visit() -> None:
            segment.track(person, "Order Completed",
                          {"order_id": f"o-{tag}", "revenue": 80, "currency": "EUR"})  # fmt: skip
            # Refused (revenue is not an amount): a dead letter carrying the person.
            bad = {"order_id": f"bad-{tag}", "revenue": "lots", "currency": "EUR"}
            segment.track(person, "Order Completed", bad)
            segment.track(kept, "Order Completed",
                          {"order_id": f"k-{tag}", "revenue": 20, "currency": "EUR"})  # fmt: skip

        await asyncio.to_thread(sign_in)

        async def known() -> Any:  # the thank-you webhook is rendered with the email
            return (await s.get(s.campaigns, "/v1/customers", email=email) or {}).get("customers")

        await until(known, "campaigns to know the person's email")
        await asyncio.to_thread(visit)
        await s.events([
            _event("billing.invoice_paid", person,
                   {"invoice_id": f"i-{tag}", "amount": "9.00", "currency": "EUR"}, "billing/app"),
            _event("support.nps_submitted", person,
                   {"score": 9, "comment": f"{name} loves it"}, "support/desk"),
        ])  # fmt: skip

        async def everywhere() -> Any:
            history = await s.get(s.stages, f"/v1/customers/{person}/transitions")
            score = await s.get(s.scoring, f"/v1/customers/{person}/score")
            actions = await s.get(s.campaigns, "/v1/actions", customer_id=person) or []
            dead = await s.get(s.ingest, "/v1/deadletters") or {"deadletters": []}
            statuses = sorted(a["status"] for a in actions)
            customer = await s.get(s.stages, f"/v1/customers/{person}") or {}
            ready = (
                history and history["transitions"] and score
                and customer.get("facts", {}).get("latest_nps") == 9
                and statuses == ["delivered", "pending"]
                and any(person in d["payload"] for d in dead["deadletters"])
                and (await s.get(s.stages, f"/v1/customers/{kept}"))
            )  # fmt: skip
            return ready and actions

        actions = await until(everywhere, "the person in every service")
        exported = await s.get(s.ingest, f"/v1/privacy/exports/{visitor}")
        assert exported["customer_id"] == person and exported["requested_id"] == visitor
        parts = exported["services"]
        assert {p: parts[p]["found"] for p in parts} == dict.fromkeys(
            ("ingest", "stage-engine", "scoring", "campaigns"), True
        )
        text = json.dumps(exported)
        assert email in text and name in text
        # The stage engine keeps the score of an NPS answer, not its comment.
        inputs = parts["stage-engine"]["inputs"]
        assert {"support.nps_submitted", "billing.invoice_paid"} <= {i["type"] for i in inputs}
        assert f"bad-{tag}" in json.dumps(parts["ingest"]["deadletters"]), parts["ingest"]
        assert len(parts["campaigns"]["actions"]) == 2

        stages_before = (await s.get(s.stages, "/v1/stages"))["stages"]
        person_stage = (await s.get(s.stages, f"/v1/customers/{person}"))["stage"]
        window = {"from": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
        flows_before = (await s.get(s.stages, "/v1/flows", **window))["flows"]
        now_stats = await s.get(s.campaigns, f"/v1/triggers/{now_trigger}/stats")
        later_stats = await s.get(s.campaigns, f"/v1/triggers/{later_trigger}/stats")

        r = await s.ingest.post("/v1/privacy/erasures", json={"email": email.upper()},
                                headers=s.admin)  # fmt: skip
        assert r.status_code == 202, r.text
        assert sorted(r.json()["customer_ids"]) == sorted([person, visitor])
        request_id = r.json()["request_id"]

        async def completed() -> Any:
            body = await s.get(s.ingest, f"/v1/privacy/erasures/{request_id}")
            return body if body["status"] == "completed" else None

        done = await until(completed, "every service to finish the erasure")
        assert done["services"]["stage-engine"]["erased"]["transitions"] >= 1
        assert done["services"]["campaigns"]["erased"]["actions"] == 2

        async def no_trace() -> list[str]:
            dump = await asyncio.to_thread(pg_dump, db)
            return [f"{n}: {line}" for n in (person, visitor, email, name)
                    for line in traces(dump, n)]  # fmt: skip

        assert await no_trace() == []

        stages_after = (await s.get(s.stages, "/v1/stages"))["stages"]
        assert stages_after == {**stages_before, person_stage: stages_before[person_stage] - 1}
        assert (await s.get(s.stages, "/v1/flows", **window))["flows"] == flows_before
        assert await s.get(s.campaigns, f"/v1/triggers/{now_trigger}/stats") == now_stats
        later_after = await s.get(s.campaigns, f"/v1/triggers/{later_trigger}/stats")
        gone = later_stats["suppressed"]
        assert later_after["suppressed"] == {
            "total": gone["total"] + 1,
            "by_reason": {**gone["by_reason"], "erased": 1},
        }

        # Replays: every message on the domain topics again, and the dead letter again
        # through the gate, as `clm-ingest deadletter replay` sends it.
        topics = s.runtimes[0].topics
        domain = await _all_messages(bootstrap_servers, topics.domains)
        dead = await _all_messages(bootstrap_servers, [topics.deadletter])
        mapping = SegmentMapping(s.runtimes[0].settings.segment_track_events)
        again = [Message(topic=m.topic, key=m.key, value=m.value, headers=list(m.headers))
                 for m in domain]  # fmt: skip
        # ... and the person's events once more under new ids, as a history import from a
        # source system sends them: no consumer has seen these ids, only the tombstones
        # stop them.
        again += [Message(topic=m.topic, key=m.key, value=_new_id(m.value), headers=list(m.headers))
                  for m in domain if m.key in (person.encode(), visitor.encode())]  # fmt: skip
        again += [m for d in dead for m in replay_record(d, topics, mapping)]
        assert any(person.encode() in m.value for m in again)
        producer = Producer(bootstrap_servers, client_id="replay")
        await producer.start()
        try:
            await producer.send_batch(again)
        finally:
            await producer.stop()
        await until(lambda: _settled(bootstrap_servers, s.runtimes), "the replay consumed")
        assert await no_trace() == []

        # Past the delayed action's due time: only the immediate one ever went out.
        due = max(datetime.fromisoformat(a["due_at"]) for a in actions)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + 2))
        sent = [r.json() for r in receiver.received]
        assert sent.count({"to": email, "name": name}) == 1  # delivered before the erasure
        assert len(sent) == 3  # and the other customer's two
