"""HTTP API of segments: admin keys change them and estimate drafts, read keys read
them and their members."""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from clm_campaigns import repository, segments
from clm_campaigns.api import Session, rfm_segment_names
from clm_campaigns.domain.segments import CompiledSegment, compile_segment_condition
from clm_campaigns.schemas import (
    EstimateIn,
    Recomputation,
    SegmentIn,
    SegmentOut,
    SegmentVersion,
)
from clm_events.auth import AdminKey, ReadKey
from clm_events.catalog import Stage
from clm_events.errors import unprocessable

router = APIRouter(prefix="/v1", tags=["segments"])
CSV_PAGE = 5000


async def _out(session: AsyncSession, row: repository.SegmentRow) -> SegmentOut:
    progress = row.recompute
    return SegmentOut(
        id=row.id,
        version=row.version,
        name=row.name,
        description=row.description,
        condition=row.condition,
        created_at=row.created_at,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        size=await repository.segment_size(session, row.id),
        recompute=Recomputation.model_validate(progress) if progress else None,
    )


async def _current(
    session: AsyncSession, segment_id: str, *, lock: bool = False
) -> repository.SegmentRow:
    row = await repository.get_segment(session, segment_id, for_update=lock)
    if row is None:
        raise HTTPException(404, f"segment {segment_id!r} not found")
    return row


def _recompute_after_commit(request: Request, session: AsyncSession) -> None:
    wake = request.app.state.recompute.wake
    sa.event.listen(session.sync_session, "after_commit", lambda _s: wake(), once=True)


@router.post("/segments", status_code=201, response_model=SegmentOut)
async def create_segment(
    body: SegmentIn, request: Request, session: Session, caller: AdminKey
) -> SegmentOut:
    """Create a segment (version 1); its members are computed in the background (see
    `recompute`) and kept live from then on."""
    row = await repository.insert_segment(
        session,
        segment_id=f"seg_{secrets.token_hex(8)}",
        name=body.name,
        description=body.description,
        condition=body.condition,
        by=caller.id,
    )
    _recompute_after_commit(request, session)
    return await _out(session, row)


@router.get("/segments", response_model=list[SegmentOut])
async def list_segments(session: Session, caller: ReadKey) -> list[SegmentOut]:
    return [await _out(session, r) for r in await repository.list_segments(session)]


@router.post("/segments/estimate")
async def estimate_segment(body: EstimateIn, session: Session, caller: AdminKey) -> dict[str, Any]:
    """How many customers a draft condition matches now, without saving anything."""
    draft = CompiledSegment("draft", 0, compile_segment_condition(body.condition))
    return {"count": await segments.estimate(session, draft)}


@router.get("/segments/{segment_id}", response_model=SegmentOut)
async def get_segment(
    segment_id: str, session: Session, caller: ReadKey, response: Response
) -> SegmentOut:
    row = await _current(session, segment_id)
    response.headers["ETag"] = f'"{row.version}"'
    return await _out(session, row)


@router.put("/segments/{segment_id}", response_model=SegmentOut)
async def replace_segment(
    segment_id: str, body: SegmentIn, request: Request, session: Session, caller: AdminKey
) -> SegmentOut:
    """A new version; its members are recomputed in the background (the live path
    evaluates the new version from the commit on)."""
    row = await _current(session, segment_id, lock=True)
    new = await repository.change_segment(
        session,
        row,
        change="updated",
        by=caller.id,
        name=body.name,
        description=body.description,
        condition=body.condition,
    )
    _recompute_after_commit(request, session)
    return await _out(session, new)


@router.delete("/segments/{segment_id}", status_code=204)
async def delete_segment(segment_id: str, session: Session, caller: AdminKey) -> Response:
    """Drop the segment and its members; its versions stay readable. Refused (409) while
    an enabled trigger fires on it."""
    row = await _current(session, segment_id, lock=True)
    if using := await repository.triggers_on_segment(session, segment_id):
        raise HTTPException(409, f"enabled triggers fire on this segment: {', '.join(using)}")
    await repository.change_segment(session, row, change="deleted", by=caller.id)
    return Response(status_code=204)


@router.get("/segments/{segment_id}/versions", response_model=list[SegmentVersion])
async def segment_versions(
    segment_id: str, session: Session, caller: ReadKey
) -> list[SegmentVersion]:
    versions = await repository.list_segment_versions(session, segment_id)
    if not versions:
        raise HTTPException(404, f"segment {segment_id!r} not found")
    return [SegmentVersion(**v) for v in versions]


@router.get("/segments/{segment_id}/size")
async def segment_size(
    segment_id: str,
    session: Session,
    caller: ReadKey,
    start: Annotated[datetime | None, Query(alias="from", description="Window start.")] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="Window end (exclusive).")
    ] = None,
) -> dict[str, Any]:
    """The size now, and over time: one sample per interval (an hour by default) in the
    window, the last 30 days unless given."""
    await _current(session, segment_id)
    now = datetime.now(UTC)
    end, start = end or now, start or (end or now) - timedelta(days=30)
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            raise unprocessable("query", name, msg="give a time zone offset")
    if end <= start:
        raise unprocessable("query", "to", msg="must be after 'from'")
    return {
        "segment_id": segment_id,
        "size": await repository.segment_size(session, segment_id),
        "from": start,
        "to": end,
        "history": await repository.size_history(session, segment_id, start, end),
    }


CSV_COLUMNS = ("customer_id", "stage", "rfm_segment", "email", "member_since", "segment_version")


@router.get("/segments/{segment_id}/members", response_model=None)
async def segment_members(
    segment_id: str,
    request: Request,
    session: Session,
    caller: ReadKey,
    after: Annotated[str, Query(max_length=256, description="`next` of the previous page")] = "",
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    stage: Stage | None = None,
    rfm_segment: Annotated[str | None, Query(max_length=64)] = None,
    format: Literal["json", "csv"] = "json",
) -> dict[str, Any] | StreamingResponse:
    """Members by customer id (keyset: pass `next` as `after`), with their stage and RFM
    segment, optionally filtered by them. `format=csv` streams every member after
    `after` (no `limit`) as CSV."""
    await _current(session, segment_id)
    filters: dict[str, Any] = {
        "stage": stage.value if stage else None,
        "rfm_segments": rfm_segment_names(rfm_segment),
    }
    if format == "csv":
        sessions = request.app.state.runtime.sessions
        return StreamingResponse(
            _csv(sessions, segment_id, after, filters),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{segment_id}.csv"'},
        )
    rows = await repository.list_members(session, segment_id, after=after, limit=limit, **filters)
    following = rows[-1]["customer_id"] if len(rows) == limit else None
    return {"segment_id": segment_id, "members": rows, "next": following}


async def _csv(
    sessions: Any, segment_id: str, after: str, filters: dict[str, Any]
) -> AsyncIterator[str]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    while True:
        async with sessions() as session:
            rows = await repository.list_members(
                session, segment_id, after=after, limit=CSV_PAGE, **filters
            )
        for r in rows:
            writer.writerow([r[c] if r[c] is not None else "" for c in CSV_COLUMNS])
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(rows) < CSV_PAGE:
            return
        after = rows[-1]["customer_id"]
