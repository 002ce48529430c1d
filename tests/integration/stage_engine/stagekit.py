"""Helpers for the stage-engine integration tests: events, waiting on the API, and
instances sharing one set of topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from kit import read_topic

from clm_events.envelope import Event, decode_kafka_record
from clm_events.settings import ClmSettings
from clm_stage_engine.config import Settings
from clm_stage_engine.main import create_app


def event(
    customer: str, id: str, type: str, time: str, source: str = "shop", **data: Any
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": type,
        "subject": customer,
        "time": time,
        "data": data,
    }


def buy(customer: str, order: str, time: str, amount: str = "20.00") -> dict[str, Any]:
    return event(
        customer,
        f"ord-{order}",
        "purchase.completed",
        time,
        order_id=order,
        amount=amount,
        currency="EUR",
    )


# A served score model (weekly BG/NBD and Gamma-Gamma) as scoring announces it.
WEEKLY = {"r": 0.8, "alpha": 6.0, "a": 0.9, "b": 3.0}
SPEND = {"p": 6.0, "q": 4.0, "gamma": 15.0}


def served(version: int, **changes: Any) -> dict[str, Any]:
    """The `lifecycle.score_model_served` event of version `version`."""
    data = {
        "version": version,
        "model": "bgnbd",
        "estimator": "mle",
        "time_unit": "week",
        "purchase_params": WEEKLY,
        "spend_params": SPEND,
        "typical_gap": 12.0,
        "horizon_months": 12,
        "monthly_discount_rate": 0.01,
        "clv_top_decile": 10_000.0,
        **changes,
    }
    return {
        "specversion": "1.0",
        "id": f"score-model:{version}",
        "source": "clm/scoring",
        "type": "lifecycle.score_model_served",
        "subject": "score-model",
        "time": datetime.now(UTC).isoformat(),
        "data": data,
    }


def domain_topic(prefix: str, e: dict[str, Any]) -> str:
    return f"{prefix}events.{e['type'].split('.')[0]}"


async def wait_for(
    probe: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 30.0
) -> Any:
    """Poll `probe` (async) until `until(result)`; return the last result either way."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if until(result) or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.2)


@asynccontextmanager
async def instance(
    database_url: str,
    bootstrap: str,
    prefix: str,
    group: str | None = None,
    settle_seconds: float = 1.0,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """One stage-engine instance on the topics named by `prefix`, in consumer `group`.
    The settle window is short: these tests send histories in a burst, then wait."""
    settings = Settings(
        group_id=group or f"g-{uuid.uuid4().hex[:8]}",
        timer_interval=0.2,
        settle_seconds=settle_seconds,
        common=ClmSettings(
            database_url=database_url,
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            topic_partitions=4,
            log_json=False,
        ),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client, app.state.runtime


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def published(
    bootstrap: str, topic: str, until: Callable[[list[Event]], bool], timeout: float = 20.0
) -> list[Event]:
    """The events on `topic`, re-read until `until(events)` holds (or the timeout)."""

    async def probe() -> list[Event]:
        records = await read_topic(bootstrap, topic, expect=1_000_000, timeout=0.5)
        return [decode_kafka_record(r.headers, r.value) for r in records]

    return await wait_for(probe, until, timeout)  # type: ignore[no-any-return]
