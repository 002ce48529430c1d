"""A realistic customer population as CloudEvents, drawn from the BG/NBD generative process.

Purchases follow BG/NBD (Fader, Hardie & Lee 2005) with the parameters fitted on CDNOW
(weeks: r=0.243, alpha=4.414, a=0.793, b=2.426); spend per purchase follows Gamma-Gamma
(p=6.25, q=3.74, gamma=15.44). Around them: web sign-ups, identifies and page views,
monthly billing for subscribers (with failed payments and cancellations), support tickets
and NPS answers. Everything is drawn from one seed, so two runs send the same events.

Each event also gets a `channel` (how the sender delivers it: the Segment API, the
CloudEvents API, or the inbound Kafka topic), derived from its id so it is stable too.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# BG/NBD and Gamma-Gamma on CDNOW (time unit: week).
R, ALPHA, A, B = 0.243, 4.414, 0.793, 2.426
GG_P, GG_Q, GG_GAMMA = 6.25, 3.74, 15.44

SOURCES = {
    "purchase": "shop/checkout",
    "billing": "billing/stripe",
    "support": "support/desk",
    "web": "web/app",
}
KEY_SOURCES = ("shop", "billing", "support", "web")  # one source key each
TIMEZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC")
CHANNELS = ("kafka", "cloudevents", "segment")


@dataclass(frozen=True)
class Draw:
    """What to draw: customers arrive uniformly over `weeks` before `end`."""

    customers: int
    end: datetime
    weeks: float = 78.0
    seed: int = 7
    prospects: float = 0.25  # share who never buy
    subscribers: float = 0.15
    support: float = 0.2
    # Channel shares: (kafka, cloudevents, segment); segment only carries types it maps.
    channel_weights: tuple[int, int, int] = (6, 2, 2)


def _source_for(kind: str) -> str:
    return SOURCES[kind.split(".", 1)[0]]


def channel_of(event_id: str, weights: tuple[int, int, int], event_type: str) -> str:
    digest = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:4], "big")
    slot = digest % sum(weights)
    channel = CHANNELS[0]
    for name, w in zip(CHANNELS, weights, strict=True):
        if slot < w:
            channel = name
            break
        slot -= w
    if channel == "segment" and event_type not in SEGMENT_TYPES:
        return "cloudevents"
    return channel


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _Customer:
    def __init__(self, cid: str, rng: random.Random, draw: Draw) -> None:
        self.id = cid
        self.rng = rng
        self.draw = draw
        self.events: list[dict[str, Any]] = []
        self.n = 0

    def add(self, at: datetime, kind: str, data: dict[str, Any]) -> None:
        if at > self.draw.end:
            return
        self.n += 1
        eid = f"{self.id}-e{self.n}"
        self.events.append(
            {
                "specversion": "1.0",
                "id": eid,
                "source": _source_for(kind),
                "type": kind,
                "subject": self.id,
                "time": _iso(at),
                "datacontenttype": "application/json",
                "data": data,
            }
        )


def draw_population(draw: Draw) -> list[dict[str, Any]]:
    """Every customer's events, merged in event-time order."""
    rng = random.Random(draw.seed)
    start = draw.end - timedelta(weeks=draw.weeks)
    events: list[dict[str, Any]] = []
    for i in range(draw.customers):
        c = _Customer(f"cust-{i:06d}", random.Random(rng.getrandbits(64)), draw)
        _draw_customer(c, start)
        events.extend(c.events)
    events.sort(key=lambda e: (e["time"], e["source"], e["id"]))
    for e in events:
        e["channel"] = channel_of(e["id"], draw.channel_weights, e["type"])
    return events


def _draw_customer(c: _Customer, start: datetime) -> None:
    rng, draw = c.rng, c.draw
    span = (draw.end - start).total_seconds()
    born = start + timedelta(seconds=rng.random() * span * 0.9)
    name = f"Customer {c.id[-6:]}"
    email = f"{c.id}@example.com"
    c.add(born, "web.signed_up", {"email": email, "name": name, "traits": {"plan": "free"}})
    c.add(
        born + timedelta(minutes=5),
        "web.identified",
        {"traits": {"email": email, "name": name, "timezone": rng.choice(TIMEZONES)}},
    )
    for k in range(rng.randint(0, 3)):
        c.add(
            born + timedelta(minutes=10 + k),
            "web.page_viewed",
            {"url": f"https://shop.example.com/p/{rng.randint(1, 500)}", "title": "Product"},
        )
    if rng.random() < draw.prospects:
        return
    # BG/NBD: purchase rate lambda ~ Gamma(r, alpha), dropout p ~ Beta(a, b) after each.
    lam = rng.gammavariate(R, 1.0 / ALPHA)  # per week
    p = rng.betavariate(A, B)
    nu = rng.gammavariate(GG_Q, 1.0 / GG_GAMMA)
    at = born + timedelta(hours=1)
    order = 0
    while at <= draw.end:
        order += 1
        amount = max(1.0, rng.gammavariate(GG_P, 1.0 / nu))
        c.add(
            at,
            "purchase.completed",
            {
                "order_id": f"{c.id}-o{order}",
                "amount": f"{amount:.2f}",
                "currency": "USD",
                "items": [
                    {
                        "sku": f"SKU-{rng.randint(1, 300)}",
                        "category": rng.choice(("music", "books", "games")),
                        "quantity": 1,
                        "unit_price": f"{amount:.2f}",
                    }
                ],
            },
        )
        if rng.random() < 0.03:
            c.add(
                at + timedelta(days=3),
                "purchase.refunded",
                {"order_id": f"{c.id}-o{order}", "amount": f"{amount:.2f}", "currency": "USD"},
            )
        gap = rng.expovariate(lam) if lam > 0 else float("inf")
        if rng.random() < p or gap > draw.weeks:
            break
        at += timedelta(weeks=gap)
    if rng.random() < draw.subscribers:
        _draw_billing(c, born + timedelta(days=rng.randint(0, 20)))
    if rng.random() < draw.support:
        _draw_support(c, born + timedelta(days=rng.randint(1, 120)))


def _draw_billing(c: _Customer, began: datetime) -> None:
    rng = c.rng
    sub = f"{c.id}-sub"
    c.add(
        began,
        "billing.subscription_started",
        {"subscription_id": sub, "plan": "plus", "amount": "9.90", "currency": "USD"},
    )
    months = rng.randint(1, 18)
    for m in range(1, months + 1):
        at = began + timedelta(days=30 * m)
        invoice = f"{c.id}-inv{m}"
        if rng.random() < 0.06:
            c.add(
                at,
                "billing.payment_failed",
                {"invoice_id": invoice, "amount": "9.90", "currency": "USD", "attempt": 1},
            )
            if rng.random() < 0.5:
                break  # never paid: the subscription ends below
            at += timedelta(days=2)
        c.add(
            at, "billing.invoice_paid", {"invoice_id": invoice, "amount": "9.90", "currency": "USD"}
        )
    else:
        if rng.random() < 0.5:
            return  # still subscribed
    c.add(
        began + timedelta(days=30 * months + 5),
        "billing.subscription_cancelled",
        {"subscription_id": sub, "reason": "voluntary"},
    )


def _draw_support(c: _Customer, at: datetime) -> None:
    rng = c.rng
    ticket = f"{c.id}-t1"
    c.add(
        at,
        "support.ticket_opened",
        {
            "ticket_id": ticket,
            "priority": rng.choice(("low", "normal", "high")),
            "channel": "email",
        },
    )
    c.add(
        at + timedelta(hours=rng.randint(1, 72)),
        "support.ticket_resolved",
        {"ticket_id": ticket, "satisfaction": rng.randint(1, 5)},
    )
    c.add(at + timedelta(days=4), "support.nps_submitted", {"score": rng.randint(0, 10)})


# -- Segment messages ------------------------------------------------------------------

SEGMENT_TYPES = {"purchase.completed", "web.signed_up", "web.identified", "web.page_viewed"}


def to_segment(event: dict[str, Any]) -> dict[str, Any]:
    """The Segment message a Segment library would send for this event."""
    d = event["data"]
    base = {"messageId": event["id"], "userId": event["subject"], "timestamp": event["time"]}
    match event["type"]:
        case "purchase.completed":
            return {
                **base,
                "type": "track",
                "event": "Order Completed",
                "properties": {
                    "order_id": d["order_id"],
                    "revenue": float(d["amount"]),
                    "currency": d["currency"],
                    "products": [
                        {
                            "sku": i["sku"],
                            "category": i["category"],
                            "quantity": i["quantity"],
                            "price": float(i["unit_price"]),
                        }
                        for i in d.get("items", [])
                    ],
                },
            }
        case "web.signed_up":
            return {
                **base,
                "type": "track",
                "event": "Signed Up",
                "properties": {"email": d["email"], "name": d["name"], **d.get("traits", {})},
            }
        case "web.identified":
            return {**base, "type": "identify", "traits": d["traits"]}
        case "web.page_viewed":
            return {**base, "type": "page", "name": d.get("title"), "properties": {"url": d["url"]}}
    raise ValueError(f"no Segment form for {event['type']}")


def segment_source(event: dict[str, Any]) -> str:
    """Segment messages get their key's source (ingest stamps it)."""
    return "shop" if event["type"].startswith("purchase.") else "web"
