"""`make demo`: a synthetic population streamed into the stack `make run` started, so
stages, scores and actions appear in the console within a minute.

The population is the one `make bench` draws (BG/NBD purchases with CDNOW parameters,
Gamma-Gamma spend, sign-ups, page views, subscriptions with failed payments and
cancellations, support tickets, NPS answers), with its time compressed: a year of history
plays in about ten minutes. Each event is sent live, stamped with the moment it is sent, so
the lifecycle moves as it would in production, only faster: customers sign up, buy, buy
again, fall at risk when they stop buying for twice their usual gap (the timer moves them,
no event needed), lapse when they cancel, and come back with a new purchase.

It uses the development keys `make run` keeps in the data dir, creates a few example
triggers and an onboarding journey (Kafka actions, so no outside system is needed) unless
they already exist, and sends everything through ingest's CloudEvents API.

    python system/demo.py [--customers 400] [--minutes 10] [--data-dir .clm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from population import Draw, draw_population

from clm_events.topics import ensure_topics

WEEKS = 52.0
ACTION_TOPIC = "clm.demo.messages"


def _payload(template: str, **fields: str) -> str:
    """A JSON message template naming `template` with the given customer fields. A
    customer's first purchase can arrive before their sign-up, so traits may be unknown:
    `default(none)` sends null instead of failing the action."""
    parts = [f'"template": "{template}"'] + [
        f'"{name}": {{{{ {path} | default(none) | tojson }}}}' for name, path in fields.items()
    ]
    return "{" + ", ".join(parts) + "}"


def _kafka(payload: str) -> dict[str, str]:
    return {"channel": "kafka", "topic": ACTION_TOPIC, "payload": payload}


TRIGGERS: list[dict[str, Any]] = [
    {
        "name": "Welcome a first-time buyer",
        "on": {"kind": "transition", "to_stage": "onboarding"},
        "action": _kafka(
            _payload("welcome", to="customer.traits.email", name="customer.traits.name")
        ),
    },
    {
        "name": "Bring back customers at risk",
        "on": {"kind": "transition", "from_stages": ["active", "loyal"], "to_stage": "at_risk"},
        "action": _kafka(
            _payload(
                "we-miss-you",
                to="customer.traits.email",
                purchases="customer.facts.purchases_total",
            )
        ),
        "holdout_percent": 20,
        "conversion_window_seconds": 120,
    },
    {
        "name": "Rescue a failed payment",
        "on": {"kind": "event", "event_type": "billing.payment_failed"},
        "action": _kafka(_payload("update-your-card", to="customer.traits.email")),
        "frequency_cap": {"max": 1, "period_seconds": 3600},
    },
    {
        "name": "Thank a new advocate",
        "on": {"kind": "transition", "to_stage": "advocate"},
        "action": _kafka(_payload("thank-you", name="customer.traits.name")),
    },
]


# The onboarding programme as a journey: the welcome, a wait, and then a thank-you for a
# second purchase or one of two tips (an A/B test with a holdout) for everyone else. The
# demo compresses time, so the wait is a minute and a half.
JOURNEY: dict[str, Any] = {
    "name": "Onboarding: welcome, then a tip or a thank-you",
    "entry": {"on": {"kind": "transition", "to_stage": "onboarding"}},
    "exit": {"condition": 'stage == "lapsed"'},
    "steps": [
        {"id": "welcome", "type": "send", "action": _kafka(_payload("journey-welcome",
         to="customer.traits.email"))},
        {"id": "wait", "type": "wait", "seconds": 90},
        {"id": "second_purchase", "type": "branch", "condition": "facts.purchases_total >= 2",
         "then": "thanks", "else": "tips"},
        {"id": "tips", "type": "split", "arms": [
            {"name": "short", "percent": 45, "next": "tip_short"},
            {"name": "long", "percent": 45, "next": "tip_long"},
            {"name": "holdout", "percent": 10, "holdout": True}]},
        {"id": "tip_short", "type": "send", "next": "done",
         "action": _kafka(_payload("tip-short", to="customer.traits.email"))},
        {"id": "tip_long", "type": "send", "next": "done",
         "action": _kafka(_payload("tip-long", to="customer.traits.email"))},
        {"id": "thanks", "type": "send",
         "action": _kafka(_payload("thanks-again", name="customer.traits.name"))},
        {"id": "done", "type": "exit"},
    ],
}  # fmt: skip


def load_keys(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "dev-keys.json"
    if not path.exists():
        sys.exit(f"no development keys in {path}: start the stack with `make run` first")
    keys: dict[str, Any] = json.loads(path.read_text())
    return keys


async def ensure_triggers(client: httpx.AsyncClient, campaigns: str, admin: str) -> None:
    auth = {"Authorization": f"Bearer {admin}"}
    existing = await client.get(f"{campaigns}/v1/triggers", headers=auth)
    existing.raise_for_status()
    names = {t["definition"]["name"] for t in existing.json()}
    for trigger in TRIGGERS:
        if trigger["name"] in names:
            continue
        answer = await client.post(f"{campaigns}/v1/triggers", json=trigger, headers=auth)
        if answer.status_code != 201:
            sys.exit(f"could not create trigger {trigger['name']!r}: {answer.text}")
        print(f"created trigger: {trigger['name']}")


async def ensure_journey(client: httpx.AsyncClient, campaigns: str, admin: str) -> None:
    auth = {"Authorization": f"Bearer {admin}"}
    existing = await client.get(f"{campaigns}/v1/journeys", headers=auth)
    existing.raise_for_status()
    if any(j["definition"]["name"] == JOURNEY["name"] for j in existing.json()):
        return
    answer = await client.post(f"{campaigns}/v1/journeys", json=JOURNEY, headers=auth)
    if answer.status_code != 201:
        sys.exit(f"could not create the journey: {answer.text}")
    print(f"created journey: {JOURNEY['name']} ({answer.json()['id']})")


def schedule(events: list[dict[str, Any]], minutes: float) -> list[tuple[float, dict[str, Any]]]:
    """(seconds after the start, event) with the population's year squeezed into `minutes`."""
    first = datetime.fromisoformat(events[0]["time"])
    scale = minutes * 60 / (WEEKS * 7 * 86400)
    return [
        ((datetime.fromisoformat(e["time"]) - first).total_seconds() * scale, e) for e in events
    ]


async def send(
    client: httpx.AsyncClient, ingest: str, keys: dict[str, str], batch: list[dict[str, Any]]
) -> None:
    now = datetime.now(UTC).isoformat()
    by_source: dict[str, list[dict[str, Any]]] = {}
    for e in batch:
        wire = {k: v for k, v in e.items() if k != "channel"} | {"time": now}
        by_source.setdefault(e["source"].split("/", 1)[0], []).append(wire)
    for source, events in by_source.items():
        for _ in range(30):
            answer = await client.post(
                f"{ingest}/v1/events",
                content=json.dumps(events).encode(),
                headers={
                    "Authorization": f"Bearer {keys[source]}",
                    "Content-Type": "application/cloudevents-batch+json",
                },
            )
            if answer.status_code == 202:
                break
            if answer.status_code < 500 and answer.status_code != 429:
                sys.exit(f"ingest refused demo events: {answer.text[:500]}")
            await asyncio.sleep(1.0)


async def report(client: httpx.AsyncClient, stage_engine: str, read: str) -> str:
    try:
        answer = await client.get(
            f"{stage_engine}/v1/stages", headers={"Authorization": f"Bearer {read}"}
        )
        counts: dict[str, int] = answer.json()["stages"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "(the stage engine is not answering)"
    return "  ".join(f"{name} {n}" for name, n in counts.items() if n)


def fresh_ids(events: list[dict[str, Any]], run: str) -> None:
    """Customer and event ids of this run only: a second demo must not be deduplicated
    against the first (consumers drop an event id they have seen)."""
    for e in events:
        e["subject"] = f"{run}-{e['subject']}"
        e["id"] = f"{run}-{e['id']}"
        data = e.get("data") or {}
        for holder in (data, data.get("traits") or {}):
            if "email" in holder:
                holder["email"] = f"{run}-{holder['email']}"


async def run(args: argparse.Namespace) -> None:
    keys = load_keys(Path(args.data_dir))
    base = "http://127.0.0.1"
    ingest, stage_engine, campaigns = (
        f"{base}:{8001 + args.port_offset}",
        f"{base}:{8002 + args.port_offset}",
        f"{base}:{8004 + args.port_offset}",
    )
    events = draw_population(
        Draw(customers=args.customers, end=datetime.now(UTC), weeks=WEEKS, seed=args.seed)
    )
    fresh_ids(events, f"demo{args.seed}")
    plan = schedule(events, args.minutes)
    console = f"{base}:{8005 + args.port_offset}"
    print(f"{len(events)} events of {args.customers} customers over {args.minutes:g} minutes")
    print(f"watch them in the console: {console}  (sign in with the admin or read key)")
    await ensure_topics(f"127.0.0.1:{args.kafka_port}", {ACTION_TOPIC: 2})
    async with httpx.AsyncClient(timeout=15.0) as client:
        await ensure_triggers(client, campaigns, keys["admin"])
        await ensure_journey(client, campaigns, keys["admin"])
        began, sent, last_report = time.monotonic(), 0, 0.0
        while sent < len(plan):
            elapsed = time.monotonic() - began
            due = [e for at, e in plan[sent : sent + 500] if at <= elapsed]
            if due:
                await send(client, ingest, keys["sources"], due)
                sent += len(due)
            if elapsed - last_report >= 10:
                last_report = elapsed
                summary = await report(client, stage_engine, keys["read"])
                print(f"{elapsed:5.0f}s  {sent}/{len(plan)} events  {summary}", flush=True)
            await asyncio.sleep(0.2)
        print(f"done: {sent} events sent; the timer keeps moving idle customers to at risk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the year")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--data-dir", default=".clm", help="where `make run` keeps its data")
    parser.add_argument("--port-offset", type=int, default=0)
    parser.add_argument("--kafka-port", type=int, default=19092)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
