"""Segments over HTTP: saving one computes its members in the background with visible
progress, members page by customer id and export as CSV, the stage and RFM filters on
members and on the plain customer list, erasure and export of a member, and the size
over time."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from campaignkit import cid, event, publish, transition
from kit import bearer, running, until
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from clm_campaigns import privacy, repository
from clm_campaigns.domain.projection import CustomerState
from clm_campaigns.segments import Recompute, SegmentCache

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _customers(tag: str) -> list[CustomerState]:
    """12 tagged customers: stage at_risk for even ones, RFM "At risk" for every third."""
    return [
        CustomerState(
            f"{tag}-{i:02}",
            stage="at_risk" if i % 2 == 0 else "active",
            stage_at=NOW,
            traits={"tag": tag, "email": f"{tag}-{i}@example.com"},
            facts={"purchases_total": i},
            scores={"rfm_segment": "At risk" if i % 3 == 0 else "Champions", "rfm_recency": 2},
        )
        for i in range(12)
    ]


async def test_members_page_export_and_filter(
    migrated: str, bootstrap_servers: str, engine: AsyncEngine, admin_key: str, read_key: str
) -> None:
    tag = f"seg{uuid.uuid4().hex[:8]}"
    people = _customers(tag)
    sessions = async_sessionmaker(engine)
    async with sessions() as s, s.begin():
        await repository.save_customers(s, people)
    admin, reader = bearer(admin_key), bearer(read_key)
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, _):
        body = {
            "name": "tagged",
            "condition": f'traits.tag == "{tag}" && facts.purchases_total >= 2',
        }
        assert (await client.post("/v1/segments", json=body, headers=reader)).status_code == 403
        created = await client.post("/v1/segments", json=body, headers=admin)
        assert created.status_code == 201, created.text
        url = f"/v1/segments/{created.json()['id']}"

        async def finished() -> Any:
            seg = (await client.get(url, headers=reader)).json()
            return seg if (seg["recompute"] or {}).get("finished_at") else None

        seg = await until(finished, "the segment's recompute")
        assert seg["size"] == 10 and seg["version"] == 1
        assert seg["recompute"]["done"] == seg["recompute"]["total"] >= 12
        assert (await client.get(f"{url}/size", headers=reader)).json()["size"] == 10

        # Keyset pages of 4: 4 + 4 + 2, by customer id.
        seen, after = [], ""
        while True:
            page = (
                await client.get(
                    f"{url}/members", params={"after": after, "limit": 4}, headers=reader
                )
            ).json()
            seen += [m["customer_id"] for m in page["members"]]
            if page["next"] is None:
                break
            after = page["next"]
        assert seen == [p.customer_id for p in people[2:]]

        exported = await client.get(f"{url}/members", params={"format": "csv"}, headers=reader)
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["customer_id"] for r in rows] == seen
        assert rows[0]["stage"] == "at_risk" and rows[0]["segment_version"] == "1"

        # Members filtered by stage and RFM segment (a slug or the published name).
        filtered = await client.get(
            f"{url}/members", params={"stage": "at_risk", "rfm_segment": "at_risk"}, headers=reader
        )
        assert [m["customer_id"] for m in filtered.json()["members"]] == [f"{tag}-06"]
        bad = await client.get(f"{url}/members", params={"rfm_segment": "nope"}, headers=reader)
        assert bad.status_code == 422 and "rfm_segment" in str(bad.json()["detail"])

        # The plain customer list, no segment needed; email keeps its behaviour.
        everyone: list[dict[str, Any]] = []
        after = ""
        while True:
            params = {"rfm_segment": "At risk", "limit": 1000, "after": after}
            got = (await client.get("/v1/customers", params=params, headers=reader)).json()
            everyone += got["customers"]
            if got["next"] is None:
                break
            after = got["next"]
        mine = [c["customer_id"] for c in everyone if c["customer_id"].startswith(tag)]
        assert mine == [f"{tag}-{i:02}" for i in (0, 3, 6, 9)]
        assert {c["rfm_segment"] for c in everyone} == {"At risk"}
        both = await client.get(
            "/v1/customers",
            params={"stage": "active", "rfm_segment": "at_risk", "after": f"{tag}-"},
            headers=reader,
        )
        assert [
            c["customer_id"] for c in both.json()["customers"] if c["customer_id"].startswith(tag)
        ] == [
            f"{tag}-03",
            f"{tag}-09",
        ]
        assert (await client.get("/v1/customers", headers=reader)).status_code == 422
        by_email = await client.get(
            "/v1/customers", params={"email": f"{tag}-3@example.com"}, headers=reader
        )
        assert by_email.json() == {
            "customers": [
                {
                    "customer_id": f"{tag}-03",
                    "stage": "active",
                    "since": NOW.isoformat(),
                    "email": f"{tag}-3@example.com",
                    "name": None,
                }
            ],
            "truncated": False,
        }

        # A new version is recomputed; the old members that no longer match leave.
        body["condition"] = f'traits.tag == "{tag}" && stage == "at_risk"'
        assert (await client.put(url, json=body, headers=admin)).status_code == 200

        async def second() -> Any:
            seg = await finished()
            return seg if seg and seg["recompute"]["version"] == 2 else None

        assert (await until(second, "the new version's recompute"))["size"] == 6

        # Erasure removes the person's memberships; the export shows them before.
        member = f"{tag}-04"
        async with sessions() as s:
            shown = await privacy.export(s, member)
        assert [m["segment_id"] for m in shown["segments"]] == [created.json()["id"]]
        async with sessions() as s, s.begin():
            await privacy.erase(s, [member])
        assert (await client.get(f"{url}/size", headers=reader)).json()["size"] == 5
        async with sessions() as s:
            assert (await privacy.export(s, member))["segments"] == []

        assert (await client.delete(url, headers=admin)).status_code == 204
        assert (await client.get(url, headers=reader)).status_code == 404
        versions = (await client.get(f"{url}/versions", headers=reader)).json()
        assert [(v["version"], v["change"]) for v in versions] == [
            (1, "created"),
            (2, "updated"),
            (3, "deleted"),
        ]


async def test_a_consumed_transition_moves_the_customer_in_and_out(
    migrated: str, bootstrap_servers: str, admin_key: str, read_key: str
) -> None:
    customer = cid()
    reader = bearer(read_key)
    async with running("clm_campaigns", migrated, bootstrap_servers) as (client, rt):
        body = {"name": "at risk", "condition": f'stage == "at_risk" && traits.tag == "{customer}"'}
        created = await client.post("/v1/segments", json=body, headers=bearer(admin_key))
        url = f"/v1/segments/{created.json()['id']}"

        async def members() -> list[str]:
            page = (await client.get(f"{url}/members", headers=reader)).json()
            return [m["customer_id"] for m in page["members"]]

        tagged = event(customer, "web.identified", {"traits": {"tag": customer}})
        await publish(bootstrap_servers, rt.topics.domain("web.identified"), customer, tagged)
        await publish(
            bootstrap_servers, rt.topics.transitions, customer, transition(customer, "at_risk")
        )
        await until(lambda: _is(members, [customer]), "the customer entering the segment")
        await publish(
            bootstrap_servers,
            rt.topics.transitions,
            customer,
            transition(customer, "won_back", "at_risk"),
        )
        await until(lambda: _is(members, []), "the customer leaving the segment")


async def _is(members: Any, expected: list[str]) -> bool:
    return bool(await members() == expected)


async def test_size_over_time_is_one_sample_per_interval(
    migrated: str, bootstrap_servers: str, engine: AsyncEngine, admin_key: str, read_key: str
) -> None:
    tag = f"size{uuid.uuid4().hex[:8]}"
    sessions = async_sessionmaker(engine)
    async with sessions() as s, s.begin():
        await repository.save_customers(s, _customers(tag))
    reader = bearer(read_key)
    every_5_min = {"segment_size_interval_seconds": 300}
    async with running("clm_campaigns", migrated, bootstrap_servers, **every_5_min) as (client, _):
        body = {"name": "sized", "condition": f'traits.tag == "{tag}" && stage == "at_risk"'}
        created = await client.post("/v1/segments", json=body, headers=bearer(admin_key))
        url = f"/v1/segments/{created.json()['id']}"

        async def finished() -> bool:
            seg = (await client.get(url, headers=reader)).json()
            return bool((seg["recompute"] or {}).get("finished_at"))

        await until(finished, "the first recompute")
        # A second replica sampling the same interval adds nothing.
        sampler = Recompute(sessions, SegmentCache(), size_interval=timedelta(minutes=5))
        await sampler.sample_sizes()
        assert await sampler.sample_sizes() == 0
        sized = (await client.get(f"{url}/size", headers=reader)).json()
        assert sized["size"] == 6
        [sample] = sized["history"]
        assert sample["members"] == 6
        at = datetime.fromisoformat(sample["at"])
        assert at.minute % 5 == 0 and at.second == 0
        before = {"to": at.isoformat()}
        assert (await client.get(f"{url}/size", params=before, headers=reader)).json()[
            "history"
        ] == []
        naive = await client.get(
            f"{url}/size", params={"from": "2026-01-01T00:00:00"}, headers=reader
        )
        assert naive.status_code == 422
        assert naive.json()["detail"][0]["loc"] == ["query", "from"]


async def test_a_write_is_committed_before_its_response_starts(
    migrated: str, bootstrap_servers: str, engine: AsyncEngine, admin_key: str
) -> None:
    """A client that reads right after a 201 finds what it created (and a commit that
    fails cannot follow a 201): when the response starts, the row is in the database."""
    name = f"committed-{uuid.uuid4().hex[:8]}"
    seen: list[int] = []

    def wrap(app: Any) -> Any:
        async def watched(scope: Any, receive: Any, send: Any) -> None:
            async def sending(message: Any) -> None:
                if message["type"] == "http.response.start" and scope["method"] == "POST":
                    async with engine.connect() as conn:
                        found = await conn.scalar(
                            sa.text("SELECT count(*) FROM campaigns.segments WHERE name = :n"),
                            {"n": name},
                        )
                    seen.append(int(found or 0))
                await send(message)

            await app(scope, receive, sending)

        return watched

    async with running("clm_campaigns", migrated, bootstrap_servers, wrap=wrap) as (client, _):
        body = {"name": name, "condition": 'stage == "lapsed"'}
        created = await client.post("/v1/segments", json=body, headers=bearer(admin_key))
        assert created.status_code == 201, created.text
    assert seen == [1]
