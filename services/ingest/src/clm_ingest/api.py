"""HTTP routes: CloudEvents and Segment-compatible. Parsing lives in bodies.py, the rules
in domain/, publishing in intake.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from clm_events.auth import ApiKey, SourceKey
from clm_ingest import bodies
from clm_ingest.config import Settings
from clm_ingest.domain.segment import SegmentMapping, to_cloudevent
from clm_ingest.intake import Answer, Intake

router = APIRouter(tags=["ingest"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not JSON, or not the expected shape."},
    401: {"description": "No key, or an invalid or revoked key."},
    403: {"description": "Not a source key, or an event of another source."},
    413: {"description": "An event over 32 KB or a request over 500 KB."},
    415: {"description": "Unsupported content type or encoding."},
    422: {"description": "Invalid events; `errors` lists index, path and reason."},
    429: {"description": "The key is over its event rate; see Retry-After."},
    503: {"description": "The broker did not acknowledge; see Retry-After."},
}
_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Every event was acknowledged by the broker.", "model": None}
}


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.runtime.settings
    return settings


IntakeDep = Annotated[Intake, Depends(_intake)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def _respond(answer: Answer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def _refused(exc: bodies.BodyError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


@router.post("/v1/events", status_code=202, responses={**_ACCEPTED, **_ERRORS})
async def post_events(
    request: Request, caller: SourceKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Publish one CloudEvent (structured `application/cloudevents+json`, or binary mode
    with `ce-*` headers) or a batch (`application/cloudevents-batch+json`)."""
    try:
        events = await bodies.cloudevents(
            request, max_event=settings.max_event_bytes, max_request=settings.max_request_bytes
        )
    except bodies.BodyError as exc:
        return _refused(exc)
    answer = await intake.accept(
        caller, events.items, events.parse, batch=events.batch, channel="cloudevents"
    )
    return _respond(answer)


async def _segment(
    request: Request, caller: ApiKey, intake: Intake, settings: Settings, call: str | None
) -> JSONResponse:
    batch = call is None
    try:
        messages = await bodies.segment(
            request,
            limit=settings.max_request_bytes if batch else settings.max_event_bytes,
            batch=batch,
        )
    except bodies.BodyError as exc:
        return _refused(exc)
    mapping = SegmentMapping(settings.segment_track_events, settings.segment_anonymous_subject)
    received_at = datetime.now(UTC)
    source = caller.source or ""

    def parse(message: Any) -> Any:
        return to_cloudevent(
            message, call=call, source=source, mapping=mapping, received_at=received_at
        )

    return _respond(await intake.accept(caller, messages, parse, batch=batch, channel="segment"))


@router.post("/v1/track", status_code=202, responses={**_ACCEPTED, **_ERRORS})
async def track(
    request: Request, caller: SourceKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment track: the event name maps to a CLM type ("Order Completed" ->
    purchase.completed, ...), or is a CLM type itself."""
    return await _segment(request, caller, intake, settings, "track")


@router.post("/v1/identify", status_code=202, responses={**_ACCEPTED, **_ERRORS})
async def identify(
    request: Request, caller: SourceKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment identify -> web.identified."""
    return await _segment(request, caller, intake, settings, "identify")


@router.post("/v1/page", status_code=202, responses={**_ACCEPTED, **_ERRORS})
async def page(
    request: Request, caller: SourceKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment page -> web.page_viewed (`properties.url` required)."""
    return await _segment(request, caller, intake, settings, "page")


@router.post("/v1/batch", status_code=202, responses={**_ACCEPTED, **_ERRORS})
async def batch(
    request: Request, caller: SourceKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment batch: `{"batch": [track | identify | page message, ...]}`, rejected whole if
    any message is invalid."""
    return await _segment(request, caller, intake, settings, None)
