"""Helpers for the campaigns tests: a local webhook receiver, events, waiting on actions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from kit import produce
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_events.envelope import encode_structured, new_event


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A plain asyncio HTTP/1.1 server on loopback that records every request.
    `statuses` are answered in turn (then 204), to make deliveries fail on purpose."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append(Received(headers, body, time.time()))
                status = self.statuses.pop(0) if self.statuses else 204
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver for the test (conftests import this fixture)."""
    r = WebhookReceiver()
    await r.start()
    yield r
    await r.stop()


def cid() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


def transition(
    customer: str,
    to_stage: str,
    from_stage: str | None = "active",
    *,
    facts: dict[str, Any] | None = None,
    event_id: str | None = None,
    at: datetime | None = None,
    **data: Any,
) -> bytes:
    """A `lifecycle.stage_changed` as the stage engine publishes it; `data` adds fields
    such as transition_id, entry, origin and send_actions."""
    at = at or datetime.now(UTC)
    return encode_structured(
        new_event(
            "lifecycle.stage_changed",
            id=event_id or f"tr-{uuid.uuid4().hex}",
            source="clm/stage-engine",
            subject=customer,
            time=at,
            data={
                "from_stage": from_stage,
                "to_stage": to_stage,
                "at": at,
                "cause": "test",
                "facts": facts or {},
                **data,
            },
        )
    )


def retraction(
    customer: str, transition_id: str, to_stage: str, from_stage: str | None = "active"
) -> bytes:
    now = datetime.now(UTC)
    return encode_structured(
        new_event(
            "lifecycle.transition_retracted",
            id=f"{transition_id}.x1",
            source="clm/stage-engine",
            subject=customer,
            time=now,
            data={
                "transition_id": transition_id,
                "from_stage": from_stage,
                "to_stage": to_stage,
                "at": now,
                "cause": "test",
            },
        )
    )


def event(customer: str, type_: str, data: dict[str, Any], *, source: str = "test") -> bytes:
    return encode_structured(
        new_event(type_, id=f"e-{uuid.uuid4().hex}", source=source, subject=customer, data=data)
    )


async def publish(bootstrap: str, topic: str, customer: str, *values: bytes) -> None:
    await produce(bootstrap, topic, list(values), key=lambda _v: customer.encode())


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 20.0, what: str = "condition"
) -> Any:
    """Poll until `check` returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.1)


async def actions(client: httpx.AsyncClient, key: str, **params: str) -> list[dict[str, Any]]:
    response = await client.get(
        "/v1/actions", params=params, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def projected(engine: AsyncEngine, customer: str, check: str = "true") -> None:
    """Wait until campaigns' customer projection has the customer (and `check`, SQL over
    the customers row, holds): events on different topics are consumed in any order."""

    async def seen() -> bool:
        async with engine.connect() as conn:
            return bool(
                await conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM campaigns.customers "
                        f"WHERE customer_id = :c AND {check}"
                    ),
                    {"c": customer},
                )
            )

    await eventually(seen, what=f"customer {customer} in the projection ({check})")


def webhook_trigger(url: str, to_stage: str = "at_risk", **extra: Any) -> dict[str, Any]:
    return {
        "name": f"trigger to {to_stage}",
        "on": {"kind": "transition", "to_stage": to_stage},
        "action": {
            "channel": "webhook",
            "url": url,
            "payload": '{"customer": "{{ customer.id }}", "action": "{{ action.id }}"}',
        },
        **extra,
    }


DAY = 86_400


def journey_send(step_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "send",
        "action": {
            "channel": "webhook",
            "url": url,
            "payload": f'{{"customer": "{{{{ customer.id }}}}", "step": "{step_id}"}}',
        },
        **extra,
    }


def onboarding(url: str, **extra: Any) -> dict[str, Any]:
    """On entering onboarding send the welcome, wait three days; if no second purchase
    send a tip, else a thank-you."""
    return {
        "name": "onboarding",
        "entry": {"on": {"kind": "transition", "to_stage": "onboarding"}},
        "steps": [
            journey_send("welcome", url),
            {"id": "three_days", "type": "wait", "seconds": 3 * DAY},
            {
                "id": "second_purchase",
                "type": "branch",
                "condition": "facts.purchases_total >= 2",
                "then": "thanks",
                "else": "tip",
            },
            journey_send("tip", url, next="done"),
            journey_send("thanks", url),
            {"id": "done", "type": "exit"},
        ],
        **extra,
    }


# The local webhook receiver listens on loopback, which the SSRF guard refuses by default.
ALLOW_LOCAL = {"webhook_allowed_networks": ["127.0.0.1/32"]}


async def isolate(engine: AsyncEngine) -> None:
    """Tests share the campaigns schema: earlier tests' triggers must not fire and their
    unsent actions must not be dispatched to receivers that are gone."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE campaigns.triggers SET enabled = false"))
        await conn.execute(
            sa.text(
                "UPDATE campaigns.actions SET status = 'failed', last_error = 'test isolation' "
                "WHERE status IN ('pending', 'sending')"
            )
        )
        # Nor their journeys enter anyone, nor their runs move on, nor their clock lead.
        await conn.execute(sa.text("UPDATE campaigns.journeys SET enabled = false"))
        await conn.execute(
            sa.text(
                "UPDATE campaigns.journey_runs SET status = 'exited', due_at = NULL, "
                "exit_reason = 'test isolation' WHERE status IN ('active', 'waiting')"
            )
        )
        await conn.execute(sa.text("DELETE FROM campaigns.clock"))
        # Earlier tests' segments must not be kept live (nor recomputed) meanwhile.
        await conn.execute(sa.text("DELETE FROM campaigns.segment_members"))
        await conn.execute(
            sa.text(
                "UPDATE campaigns.segments SET deleted_at = now(), recompute = NULL "
                "WHERE deleted_at IS NULL"
            )
        )
