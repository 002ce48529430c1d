"""HTTP routes: CloudEvents, Segment-compatible calls and the identity graph. Parsing
lives in bodies.py, the rules in domain/, publishing in intake.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse

from clm_events.auth import UNAUTHORIZED, ApiKey, KeyStore, ReadKey, Role, SourceKey, require
from clm_events.envelope import Event
from clm_events.service import Runtime
from clm_ingest import bodies, repository, segment_deadletters
from clm_ingest.config import Settings
from clm_ingest.domain.gate import Problem
from clm_ingest.domain.segment import SegmentMapping, to_cloudevents
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
_SEGMENT_ERRORS = {k: v for k, v in _ERRORS.items() if k not in (403, 415, 422)}
_SEGMENT_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Every valid message was acknowledged by the broker; `deadlettered` "
        "lists the invalid ones (index, path, reason), kept in the dead-letter store.",
        "model": None,
    }
}


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.runtime.settings
    return settings


_source_key = require(Role.source)


async def _header_key(request: Request) -> ApiKey | None:
    """The source key of the Authorization header, checked before the body is read; None
    without the header: analytics.js puts the write key in the body instead (a browser
    then sends no CORS preflight)."""
    if request.headers.get("authorization") is None:
        return None
    return await _source_key(request)


IntakeDep = Annotated[Intake, Depends(_intake)]
SettingsDep = Annotated[Settings, Depends(_settings)]
HeaderKey = Annotated[ApiKey | None, Depends(_header_key)]


async def _body_key(request: Request, body: dict[str, Any]) -> ApiKey:
    plaintext = body.get("writeKey")
    if not isinstance(plaintext, str) or not plaintext:
        raise HTTPException(
            401,
            "missing API key (Authorization: Basic with the write key as username, or "
            "writeKey in the body)",
            headers=UNAUTHORIZED,
        )
    keys: KeyStore = request.app.state.keys
    key = await keys.lookup(plaintext)
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", headers=UNAUTHORIZED)
    if key.role is not Role.source:
        raise HTTPException(403, f"a {key.role.value} key cannot do this; it needs a source key")
    return key


def _respond(answer: Answer, *, cors: bool = False) -> JSONResponse:
    headers = dict(answer.headers)
    if cors:  # a browser must be able to read the answer, or analytics.js sends it again
        headers["Access-Control-Allow-Origin"] = "*"
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


def _refused(exc: bodies.BodyError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


@router.post("/v1/events", status_code=202, responses={**_ACCEPTED, **_ERRORS})
async def post_events(
    request: Request, caller: SourceKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Publish one CloudEvent (structured `application/cloudevents+json`, or binary mode
    with `ce-*` headers) or a batch (`application/cloudevents-batch+json`), whole or not
    at all."""
    try:
        events = await bodies.cloudevents(
            request, max_event=settings.max_event_bytes, max_request=settings.max_request_bytes
        )
    except bodies.BodyError as exc:
        return _refused(exc)

    def parse(item: Any) -> list[Event]:
        return [events.parse(item)]

    answer = await intake.accept(
        caller, events.items, parse, batch=events.batch, channel="cloudevents"
    )
    return _respond(answer)


async def _segment(
    request: Request, caller: ApiKey | None, intake: Intake, settings: Settings, call: str | None
) -> JSONResponse:
    batch = call is None
    limit = settings.max_request_bytes if batch else settings.max_event_bytes
    try:
        body, messages = await bodies.segment(request, limit=limit, batch=batch)
    except bodies.BodyError as exc:
        return _refused(exc)
    caller = caller or await _body_key(request, body)
    source = caller.source or ""
    mapping = SegmentMapping(settings.segment_track_events)
    received_at = datetime.now(UTC)
    deadletter_topic = _runtime(request).topics.deadletter

    def parse(message: Any) -> list[Event]:
        return to_cloudevents(
            message, call=call, source=source, mapping=mapping, received_at=received_at
        )

    def deadletter(position: int, problems: list[Problem]) -> Any:
        return segment_deadletters.deadletter(
            messages[position],
            problems,
            topic=deadletter_topic,
            route=request.url.path,
            call=call,
            source=source,
            received_at=received_at,
        )

    answer = await intake.accept(
        caller, messages, parse, batch=batch, channel="segment", deadletter=deadletter
    )
    return _respond(answer, cors=True)


# Each call also answers on analytics.js's one-letter path (`apiHost` = "<ingest>/v1").
_SEGMENT = {**_SEGMENT_ACCEPTED, **_SEGMENT_ERRORS}


@router.post("/v1/track", status_code=202, responses=_SEGMENT)
@router.post("/v1/t", include_in_schema=False)
async def track(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment track: "Order Completed" -> purchase.completed (and the other mapped names),
    a CLM type name -> that type, any other name -> web.tracked."""
    return await _segment(request, caller, intake, settings, "track")


@router.post("/v1/identify", status_code=202, responses=_SEGMENT)
@router.post("/v1/i", include_in_schema=False)
async def identify(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment identify -> web.identified, plus identity.linked with both userId and
    anonymousId."""
    return await _segment(request, caller, intake, settings, "identify")


@router.post("/v1/page", status_code=202, responses=_SEGMENT)
@router.post("/v1/p", include_in_schema=False)
async def page(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment page -> web.page_viewed (`properties.url`, else `context.page.url`)."""
    return await _segment(request, caller, intake, settings, "page")


@router.post("/v1/screen", status_code=202, responses=_SEGMENT)
@router.post("/v1/s", include_in_schema=False)
async def screen(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment screen -> web.screen_viewed."""
    return await _segment(request, caller, intake, settings, "screen")


@router.post("/v1/group", status_code=202, responses=_SEGMENT)
@router.post("/v1/g", include_in_schema=False)
async def group(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment group: accepted, and nothing is kept (CLM has no accounts)."""
    return await _segment(request, caller, intake, settings, "group")


@router.post("/v1/alias", status_code=202, responses=_SEGMENT)
@router.post("/v1/a", include_in_schema=False)
async def alias(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment alias -> identity.linked: `previousId` is `userId` from now on."""
    return await _segment(request, caller, intake, settings, "alias")


@router.post("/v1/batch", status_code=202, responses=_SEGMENT)
@router.post("/v1/b", include_in_schema=False)
async def batch(
    request: Request, caller: HeaderKey, intake: IntakeDep, settings: SettingsDep
) -> JSONResponse:
    """Segment batch: `{"batch": [message, ...]}` of any calls; the valid messages are
    published, each invalid one dead-lettered and listed in `deadlettered`."""
    return await _segment(request, caller, intake, settings, None)


@router.get("/v1/identities/{some_id:path}", tags=["identities"])
async def identity(
    request: Request,
    caller: ReadKey,
    some_id: Annotated[str, Path(min_length=1, max_length=256)],
) -> dict[str, Any]:
    """The customer an id counts for (itself unless it is a linked anonymous id) and
    the anonymous ids linked to that customer."""
    async with _runtime(request).sessions() as session:
        customer, links = await repository.identity_of(session, some_id)
    return {
        "id": some_id,
        "customer_id": customer,
        "linked_ids": [
            {
                "anonymous_id": r.anonymous_id,
                "linked_at": r.linked_at.isoformat(),
                "source": r.source,
                "event_id": r.event_id,
            }
            for r in links
        ],
    }
