"""Backfill: load historical events (a CSV file) into customers' timelines with event
time as the clock. Each customer's inputs are added at once and evaluated up to the
watermark (the newest event time, or a later `until`), which yields the same stages and
history as live processing of the same events: see domain.timeline.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.envelope import Event, EventValidationError, parse_event
from clm_events.privacy import Tombstones
from clm_stage_engine.domain.inputs import Input, from_event, to_us
from clm_stage_engine.handlers import StageEngine
from clm_stage_engine.outbound import Origin

EVENT_COLUMNS = {"id", "source", "type", "subject", "time", "data"}
ORDER_COLUMNS = {"customer_id", "order_id", "time", "amount", "currency"}
MAX_ERRORS = 20


class BackfillError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass
class Summary:
    events: int = 0
    customers: int = 0
    transitions: int = 0
    erased: int = 0  # customers skipped: erased for privacy, their events stay out
    watermark: datetime | None = None


def _event_row(row: dict[str, str]) -> dict[str, Any]:
    try:
        data = json.loads(row["data"] or "{}")
    except json.JSONDecodeError as exc:
        raise EventValidationError([]) from ValueError(f"data: not JSON ({exc.msg})")
    return {
        "specversion": "1.0",
        "id": row["id"],
        "source": row["source"],
        "type": row["type"],
        "subject": row["subject"],
        "time": row["time"],
        "data": data,
    }


def _order_row(row: dict[str, str], source: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"ord-{row['order_id']}",
        "source": row.get("source") or source,
        "type": "purchase.completed",
        "subject": row["customer_id"],
        "time": row["time"],
        "data": {"order_id": row["order_id"], "amount": row["amount"], "currency": row["currency"]},
    }


def read_csv(lines: Iterable[str], *, source: str = "backfill") -> list[Event]:
    """Parse and validate every row; raise BackfillError listing bad rows (nothing is
    loaded unless every row is valid).

    Two layouts: events (`id,source,type,subject,time,data` with `data` a JSON object)
    or orders (`customer_id,order_id,time,amount,currency[,source]`, as purchases)."""
    reader = csv.DictReader(lines)
    columns = set(reader.fieldnames or [])
    if EVENT_COLUMNS <= columns:
        build = _event_row
    elif ORDER_COLUMNS <= columns:

        def build(row: dict[str, str]) -> dict[str, Any]:
            return _order_row(row, source)

    else:
        raise BackfillError(
            [
                "unknown CSV layout: the header needs the columns "
                f"{sorted(EVENT_COLUMNS)} (events) or {sorted(ORDER_COLUMNS)} (orders)"
            ]
        )
    events: list[Event] = []
    errors: list[str] = []
    for line, row in enumerate(reader, start=2):
        try:
            event = parse_event(build(row))
            if from_event(event) is None:
                raise BackfillError([f"type {event.type!r} is not a stage-engine input"])
            events.append(event)
        except EventValidationError as exc:
            cause = exc.__cause__
            errors.append(f"line {line}: {cause if exc.errors == [] and cause else exc}")
        except BackfillError as exc:
            errors.append(f"line {line}: {exc}")
        if len(errors) >= MAX_ERRORS:
            errors.append("(stopped after 20 errors)")
            break
    if errors:
        raise BackfillError(errors)
    return events


def read_file(path: Path, *, source: str = "backfill") -> list[Event]:
    with path.open(newline="", encoding="utf-8") as f:
        return read_csv(f, source=source)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def run(
    sessions: async_sessionmaker[AsyncSession],
    engine: StageEngine,
    events: list[Event],
    *,
    tombstones: Tombstones | None,
    until: datetime | None = None,
    publish: bool = True,
    send_actions: bool = False,
    batch_customers: int = 500,
) -> Summary:
    """Apply the events, customer by customer, in transactions of `batch_customers`.
    Re-running it changes nothing: inputs are deduplicated by (source, id). Customers
    erased for privacy are skipped, as the consumers drop their events.

    The transitions it publishes say they come from a backfill: campaigns act on them only
    with `send_actions` (and then still not on those older than a trigger's maximum age)."""
    by_customer: dict[str, list[Input]] = {}
    for e in events:
        i = from_event(e)
        if i is not None:
            by_customer.setdefault(e.subject, []).append(i)
    summary = Summary(events=len(events), customers=len(by_customer))
    if not events:
        return summary
    watermark = max(e.time for e in events)
    clock = max(watermark, until) if until else watermark
    summary.watermark = clock
    for ids in _chunks(sorted(by_customer), batch_customers):
        async with sessions() as session, session.begin():
            # Also waits for an erasure in progress (the guard), so none interleaves.
            erased = await tombstones.erased(session, ids) if tombstones else set()
            summary.erased += len(erased)
            summary.transitions += await engine.apply(
                session,
                {cid: by_customer[cid] for cid in ids if cid not in erased},
                clock=to_us(clock),
                kind="backfill",
                publish=publish,
                origin=Origin(send_actions=send_actions),
            )
    return summary
