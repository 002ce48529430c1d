"""HTTP over the dead-letter store: list (read key) and replay (admin key)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.auth import AdminKey, ReadKey
from clm_events.errors import unprocessable
from clm_events.service import Runtime
from clm_ingest import deadletter_store as store
from clm_ingest.config import Settings
from clm_ingest.domain.segment import SegmentMapping

router = APIRouter(prefix="/v1/deadletters", tags=["dead letters"])


class ReplayBody(BaseModel):
    payload: str | None = Field(
        None, description="A corrected message body to send instead of the original."
    )


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    return _runtime(request).sessions


@router.get("")
async def list_deadletters(
    request: Request,
    caller: ReadKey,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    reason: Annotated[str | None, Query(max_length=200)] = None,
    source_topic: Annotated[str | None, Query(max_length=249)] = None,
    before: Annotated[
        str | None, Query(description="The `next` cursor of the previous page.", max_length=80)
    ] = None,
) -> dict[str, Any]:
    """Dead-lettered messages, newest first: why, where from, and the original payload."""
    cursor = _cursor(before) if before else None
    async with _sessions(request)() as session:
        rows = await store.list_rows(
            session, limit=limit, reason=reason, source_topic=source_topic, before=cursor
        )
    last = rows[-1] if len(rows) == limit else None
    return {
        "deadletters": [store.describe(r) for r in rows],
        "next": f"{last.at.isoformat()}~{last.partition}~{last.offset}" if last else None,
    }


def _cursor(value: str) -> tuple[datetime, int, int]:
    try:
        at, partition, offset = value.split("~")
        return datetime.fromisoformat(at), int(partition), int(offset)
    except ValueError:
        raise unprocessable("query", "before", msg="not a cursor from a previous page") from None


@router.post("/{deadletter_id}/replay", status_code=202)
async def replay_deadletter(
    request: Request,
    deadletter_id: str,
    caller: AdminKey,
    body: Annotated[ReplayBody | None, Body()] = None,
) -> dict[str, Any]:
    """Send the message (or a corrected body) back through the ingest gate."""
    place = store.parse_id(deadletter_id)
    rt = _runtime(request)
    if place is None:
        raise HTTPException(404, f"no dead letter {deadletter_id!r}")
    async with rt.sessions() as session:
        row = await store.get_row(session, *place)
    if row is None:
        raise HTTPException(404, f"no dead letter {deadletter_id!r}")
    payload = body.payload.encode() if body and body.payload is not None else None
    settings: Settings = request.app.state.runtime.settings
    limit = settings.max_event_bytes
    if payload is not None and len(payload) > limit:
        raise HTTPException(413, f"payload is {len(payload)} bytes; the limit is {limit}")
    try:
        published = await store.replay(
            rt.sessions,
            rt.producer,
            row,
            topics=rt.topics,
            mapping=SegmentMapping(settings.segment_track_events),
            payload=payload,
        )
    except Exception as exc:  # the broker did not take it: nothing was recorded
        raise HTTPException(503, f"the broker did not accept the replay: {exc}") from exc
    return {"replayed": deadletter_id, "topic": rt.topics.inbound, "messages": published}
