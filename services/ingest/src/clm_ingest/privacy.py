"""Erasure and export of a customer, coordinated by ingest (docs/operations.md, "Privacy").

An erasure request resolves to ids (the customer and every anonymous id linked to it),
is written to the audit table and queued for `clm.privacy` through the outbox in one
transaction. Every service, ingest too, erases its own part when the request reaches its
privacy group and answers with `privacy.erasure_completed`, which ingest's group records
on the audit row. An export asks each service's `/v1/privacy/customers/{id}` with the
caller's own key and puts the answers into one document.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery, Handler
from clm_events.envelope import (
    PrivacyErasureCompletedEvent,
    PrivacyErasureRequestedEvent,
    new_event,
)
from clm_events.outbox import add_event
from clm_events.privacy import Tombstones, erase_customers
from clm_ingest import deadletter_store, repository
from clm_ingest.models import outbox

SERVICE = "ingest"


class ServiceUnavailable(Exception):
    """A service an erasure or an export needs did not answer."""

    def __init__(self, service: str, why: str) -> None:
        super().__init__(f"{service} did not answer: {why}")
        self.service = service


class TooMany(Exception):
    """An email shared by so many customers that erasing them all at once is a mistake."""


async def ids_of_customer(session: AsyncSession, customer_id: str) -> list[str]:
    """The customer `customer_id` counts for, then every anonymous id linked to it."""
    customer, links = await repository.identity_of(session, customer_id)
    return [customer, *(r.anonymous_id for r in links if r.anonymous_id != customer)]


async def customers_with_email(
    campaigns_url: str, email: str, authorization: str, timeout: float
) -> list[str]:
    """Who carries the email: campaigns keeps the customers' traits."""
    try:
        async with httpx.AsyncClient(base_url=campaigns_url, timeout=timeout) as client:
            r = await client.get(
                "/v1/customers",
                params={"email": email, "limit": 100},
                headers={"Authorization": authorization},
            )
    except httpx.HTTPError as exc:
        raise ServiceUnavailable("campaigns", type(exc).__name__) from exc
    if r.status_code != 200:
        raise ServiceUnavailable("campaigns", f"HTTP {r.status_code}")
    body = r.json()
    if body.get("truncated"):
        raise TooMany("more than 100 customers carry this email; erase them by customer_id")
    return [c["customer_id"] for c in body["customers"]]


async def request_erasure(
    session: AsyncSession, topic: str, ids: Sequence[str], *, requested_by: str, selector: str
) -> sa.Row[Any]:
    """Record the request (no PII) and queue it for every service, atomically."""
    request_id = f"era_{uuid.uuid4().hex}"
    row = await repository.record_erasure_request(
        session, request_id, requested_by=requested_by, selector=selector, ids=len(ids)
    )
    event = new_event(
        "privacy.erasure_requested",
        id=request_id,
        source="clm/ingest",
        subject=ids[0],
        data={"request_id": request_id, "customer_ids": list(ids)},
    )
    await add_event(session, outbox, topic, event)
    return row


def privacy_handler(tombstones: Tombstones, topic: str, services: Sequence[str]) -> Handler:
    """Ingest's `clm.privacy` group: erase ingest's part of each request, and record
    every service's completion on the audit row."""

    async def handle(session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            event = d.event
            if isinstance(event, PrivacyErasureRequestedEvent):
                await erase_customers(
                    session,
                    event,
                    service=SERVICE,
                    tombstones=tombstones,
                    outbox=outbox,
                    topic=topic,
                    erase=repository.erase,
                )
            elif isinstance(event, PrivacyErasureCompletedEvent):
                data = event.data
                await repository.record_erasure_done(
                    session, data.request_id, data.service, data.erased, services
                )

    return handle


def describe_request(row: sa.Row[Any], services: Sequence[str]) -> dict[str, Any]:
    done: Mapping[str, Any] = row.services
    return {
        "request_id": row.request_id,
        "status": "completed" if row.completed_at else "pending",
        "requested_at": row.requested_at.isoformat(),
        "requested_by": row.requested_by,
        "selector": row.selector,
        "ids": row.ids,
        "services": {s: done.get(s) for s in services},
        "completed_at": row.completed_at.isoformat() if row.completed_at else None,
    }


async def ingest_part(session: AsyncSession, customer_id: str) -> dict[str, Any]:
    """What ingest holds: the identity links and the dead letters carrying the ids."""
    customer, links = await repository.identity_of(session, customer_id)
    ids = [customer, *(r.anonymous_id for r in links)]
    dead = await repository.deadletters_of(session, ids)
    return {
        "service": SERVICE,
        "customer_id": customer,
        "found": bool(links or dead),
        "linked_ids": [
            {"anonymous_id": r.anonymous_id, "linked_at": r.linked_at.isoformat()} for r in links
        ],
        "deadletters": [deadletter_store.describe(r) for r in dead],
    }


async def export(
    customer_id: str,
    mine: dict[str, Any],
    urls: Mapping[str, str],
    authorization: str,
    timeout: float,
) -> dict[str, Any]:
    """One document of everything every service holds about the customer. A service
    that does not answer fails the export: a partial one would look complete."""

    async def part(client: httpx.AsyncClient, service: str, url: str) -> dict[str, Any]:
        path = f"{url.rstrip('/')}/v1/privacy/customers/{quote(mine['customer_id'], safe='')}"
        try:
            r = await client.get(path, headers={"Authorization": authorization})
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(service, type(exc).__name__) from exc
        if r.status_code != 200:
            raise ServiceUnavailable(service, f"HTTP {r.status_code}")
        body: dict[str, Any] = r.json()
        return body

    async with httpx.AsyncClient(timeout=timeout) as client:
        parts = await asyncio.gather(*(part(client, s, u) for s, u in urls.items()))
    return {
        "customer_id": mine["customer_id"],
        "requested_id": customer_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "services": {SERVICE: mine, **dict(zip(urls, parts, strict=True))},
    }
