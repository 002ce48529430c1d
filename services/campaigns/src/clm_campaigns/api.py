"""HTTP API: triggers (admin keys change them), preview, stats and actions (read keys)."""

from __future__ import annotations

import asyncio
import base64
import copy
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from clm_campaigns import privacy, repository
from clm_campaigns.channels import SsrfRefused, check_target
from clm_campaigns.domain.evaluate import (
    SEGMENT_OCCASIONS,
    condition_context,
    preview_json,
    render,
    template_context,
)
from clm_campaigns.domain.projection import Occasion
from clm_campaigns.domain.stats import Group, summarize
from clm_campaigns.domain.templates import TemplateProblem, missing_paths
from clm_campaigns.domain.triggers import (
    STORED,
    OnEvent,
    OnSegment,
    OnTransition,
    TriggerDefinition,
    WebhookAction,
    compile_trigger,
    definition_json,
)
from clm_campaigns.schemas import (
    ActionOut,
    ActionStatus,
    DraftPreviewIn,
    PreviewIn,
    PreviewOut,
    TriggerIn,
    TriggerOut,
    TriggerVersion,
)
from clm_events.auth import AdminKey, ReadKey
from clm_events.catalog import RFM_SEGMENTS, Stage
from clm_events.errors import unprocessable

router = APIRouter(prefix="/v1", tags=["campaigns"])


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # The request owns the transaction: committed when the endpoint returns, rolled back
    # when it raises.
    async with request.app.state.runtime.sessions() as session, session.begin():
        yield session


# scope="function": committed before the response is sent. By default the code after
# yield runs once the response has gone, so a client could read before the commit (a
# 404 for the segment it just created) or be told 201 for a commit that then failed.
Session = Annotated[AsyncSession, Depends(_session, scope="function")]


def _masked(definition: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(definition)
    action = out.get("action", {})
    if action.get("secret"):
        action["secret"] = "whsec_********"
    return out


def _out(row: repository.TriggerRow, secret: str | None = None) -> TriggerOut:
    return TriggerOut(
        id=row.id,
        version=row.version,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        definition=_masked(row.definition),
        secret=secret,
    )


async def _check_references(
    request: Request, session: AsyncSession, definition: TriggerDefinition
) -> None:
    """Refuse a segment that does not exist, and webhook targets in loopback, private or
    link-local ranges (SSRF) now; a host that does not resolve yet is checked again at
    every send."""
    on = definition.on
    if isinstance(on, OnSegment) and await repository.get_segment(session, on.segment_id) is None:
        raise unprocessable("body", "on", "segment_id", msg=f"no segment {on.segment_id!r}")
    action = definition.action
    if not isinstance(action, WebhookAction):
        return
    allowed = request.app.state.dispatcher.webhooks.allowed
    try:
        await asyncio.wait_for(check_target(action.url, allowed), timeout=2.0)
    except SsrfRefused as exc:
        raise unprocessable("body", "action", "url", msg=str(exc)) from exc
    except (OSError, TimeoutError):
        pass


def _with_secret(
    definition: TriggerDefinition, previous: dict[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    """The definition to store, with a webhook secret: the given one, the previous one,
    or a new one (returned so the response can show it once)."""
    data = definition_json(definition)
    action = data["action"]
    if action["channel"] != "webhook" or action.get("secret"):
        return data, None
    old = (previous or {}).get("action", {})
    if old.get("channel") == "webhook" and old.get("secret"):
        action["secret"] = old["secret"]
        return data, None
    action["secret"] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    return data, action["secret"]


async def _current(
    session: AsyncSession, trigger_id: str, *, lock: bool = False
) -> repository.TriggerRow:
    row = await repository.get_trigger(session, trigger_id, for_update=lock)
    if row is None:
        raise HTTPException(404, f"trigger {trigger_id!r} not found")
    return row


def _check_version(row: repository.TriggerRow, if_match: str | None) -> None:
    if if_match is not None and if_match.strip('"W/') != str(row.version):
        raise HTTPException(412, f"trigger {row.id!r} is at version {row.version}, not {if_match}")


@router.post("/triggers", status_code=201, response_model=TriggerOut)
async def create_trigger(
    body: TriggerIn, request: Request, session: Session, caller: AdminKey
) -> TriggerOut:
    """Create a trigger (version 1). A webhook secret is generated when none is given
    and shown once in this response."""
    definition = body.definition()
    await _check_references(request, session, definition)
    data, secret = _with_secret(definition, None)
    row = await repository.insert_trigger(
        session,
        trigger_id=f"trg_{secrets.token_hex(8)}",
        definition=data,
        enabled=body.enabled,
        by=caller.id,
    )
    return _out(row, secret)


# Discriminator values pydantic puts in error locations; a form shows the field alone.
_TAGS = {
    "transition",
    "event",
    "score",
    "entered_segment",
    "left_segment",
    "webhook",
    "email",
    "kafka",
}


def _problems(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body" and p not in _TAGS]
        out.append({"path": ".".join(loc), "reason": str(e.get("msg", ""))})
    return out


async def _draft(
    request: Request, session: AsyncSession, body: dict[str, Any]
) -> TriggerDefinition:
    """A trigger definition checked as create/replace check it; HTTPException 422 if not."""
    try:
        definition = TriggerIn.model_validate(body).definition()
    except ValidationError as exc:
        raise HTTPException(
            422, exc.errors(include_url=False, include_input=False, include_context=False)
        ) from exc
    await _check_references(request, session, definition)
    return definition


@router.post("/triggers/validate")
async def validate_trigger(
    request: Request,
    session: Session,
    caller: AdminKey,
    body: Annotated[dict[str, Any], Body()],
) -> dict[str, Any]:
    """Check a draft trigger as create would (conditions, templates, stages, channels,
    webhook target) and store nothing: `{"valid", "errors": [{"path", "reason"}]}`."""
    try:
        await _draft(request, session, body)
    except HTTPException as exc:
        detail = exc.detail if isinstance(exc.detail, list) else [{"msg": str(exc.detail)}]
        return {"valid": False, "errors": _problems(detail)}
    return {"valid": True, "errors": []}


@router.post("/triggers/preview", response_model=PreviewOut)
async def preview_draft(
    body: DraftPreviewIn, request: Request, session: Session, caller: AdminKey
) -> PreviewOut:
    """Render a draft trigger's action for a customer before it is saved; sends and
    records nothing."""
    definition = await _draft(request, session, body.definition)
    trigger = compile_trigger("draft", 0, definition)
    return await _render_preview(session, trigger, body, trigger_id=None)


@router.get("/triggers", response_model=list[TriggerOut])
async def list_triggers(
    session: Session, caller: ReadKey, enabled: bool | None = None
) -> list[TriggerOut]:
    return [_out(r) for r in await repository.list_triggers(session, enabled=enabled)]


@router.get("/triggers/{trigger_id}", response_model=TriggerOut)
async def get_trigger(
    trigger_id: str, session: Session, caller: ReadKey, response: Response
) -> TriggerOut:
    row = await _current(session, trigger_id)
    response.headers["ETag"] = f'"{row.version}"'
    return _out(row)


@router.put("/triggers/{trigger_id}", response_model=TriggerOut)
async def replace_trigger(
    trigger_id: str,
    body: TriggerIn,
    request: Request,
    session: Session,
    caller: AdminKey,
    if_match: Annotated[str | None, Header(description="Expected version (optional).")] = None,
) -> TriggerOut:
    """Replace the definition: a new version. An omitted webhook secret keeps the old one."""
    row = await _current(session, trigger_id, lock=True)
    _check_version(row, if_match)
    definition = body.definition()
    await _check_references(request, session, definition)
    data, secret = _with_secret(definition, row.definition)
    new = await repository.change_trigger(
        session, row, change="updated", by=caller.id, definition=data, enabled=body.enabled
    )
    return _out(new, secret)


@router.delete("/triggers/{trigger_id}", status_code=204)
async def delete_trigger(trigger_id: str, session: Session, caller: AdminKey) -> Response:
    """Stop the trigger for good. Its versions, actions and stats stay readable."""
    row = await _current(session, trigger_id, lock=True)
    await repository.change_trigger(session, row, change="deleted", by=caller.id, delete=True)
    return Response(status_code=204)


@router.post("/triggers/{trigger_id}/enable", response_model=TriggerOut)
async def enable_trigger(trigger_id: str, session: Session, caller: AdminKey) -> TriggerOut:
    row = await _current(session, trigger_id, lock=True)
    if row.enabled:
        return _out(row)
    return _out(
        await repository.change_trigger(session, row, change="enabled", by=caller.id, enabled=True)
    )


@router.post("/triggers/{trigger_id}/disable", response_model=TriggerOut)
async def disable_trigger(trigger_id: str, session: Session, caller: AdminKey) -> TriggerOut:
    row = await _current(session, trigger_id, lock=True)
    if not row.enabled:
        return _out(row)
    return _out(
        await repository.change_trigger(
            session, row, change="disabled", by=caller.id, enabled=False
        )
    )


@router.get("/triggers/{trigger_id}/versions", response_model=list[TriggerVersion])
async def trigger_versions(
    trigger_id: str, session: Session, caller: ReadKey
) -> list[TriggerVersion]:
    """Every version: what changed, who (API key id) and when."""
    versions = await repository.list_versions(session, trigger_id)
    if not versions:
        raise HTTPException(404, f"trigger {trigger_id!r} not found")
    return [TriggerVersion(**{**v, "definition": _masked(v["definition"])}) for v in versions]


@router.post("/triggers/{trigger_id}/enroll")
async def enroll(
    trigger_id: str,
    request: Request,
    session: Session,
    caller: AdminKey,
    after: Annotated[str, Query(max_length=256, description="`next` of the previous page")] = "",
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict[str, Any]:
    """A transition (or entered_segment) trigger acts only on entries that happen after
    it exists; this acts on customers who already are in its stage (segment), one page
    of customers at a time (call again with `after` = `next` until it is null). Each
    gets what a new entry would: condition, re-entry control, caps, holdout and
    schedule; enrolling twice sends nothing twice."""
    # Writes customers' actions outside the consumer runner: an erasure must not interleave.
    await request.app.state.runtime.tombstones.guard(session)
    row = await _current(session, trigger_id)
    if not row.enabled:
        raise HTTPException(409, "the trigger is disabled: enable it first")
    stored = TriggerDefinition.model_validate(row.definition, context=STORED)
    if not isinstance(stored.on, OnTransition) and not (
        isinstance(stored.on, OnSegment) and stored.on.kind == "entered_segment"
    ):
        raise HTTPException(
            422,
            "only transition and entered_segment triggers enroll the customers already in "
            "their stage or segment",
        )
    trigger = compile_trigger(row.id, row.version, stored)
    rows, following = await request.app.state.campaigns.enroll(
        session, trigger, after=after, limit=limit
    )
    request.app.state.dispatcher.wake()
    statuses = Counter(r["status"] for r in rows)
    reasons = Counter(r["suppressed_reason"] for r in rows if r["suppressed_reason"])
    return {
        "enrolled": len(rows),
        "by_status": dict(statuses),
        "suppressed": dict(reasons),
        "next": following,
    }


@router.post("/triggers/{trigger_id}/preview", response_model=PreviewOut)
async def preview(
    trigger_id: str, body: PreviewIn, session: Session, caller: AdminKey
) -> PreviewOut:
    """Render the action for a customer as it would be sent now, without sending or
    recording anything."""
    row = await _current(session, trigger_id)
    trigger = compile_trigger(
        row.id, row.version, TriggerDefinition.model_validate(row.definition, context=STORED)
    )
    return await _render_preview(session, trigger, body, trigger_id=row.id)


async def _render_preview(
    session: AsyncSession, trigger: Any, body: PreviewIn, *, trigger_id: str | None
) -> PreviewOut:
    state = await repository.get_customer(session, body.customer_id)
    if state is None:
        raise HTTPException(404, f"customer {body.customer_id!r} is not known to campaigns yet")
    occasion = _sample_occasion(trigger.definition, body, state.stage, state.scores)
    context = template_context(trigger, state, occasion, "act_preview")
    missing = sorted({p for t in trigger.templates.values() for p in missing_paths(t, context)})
    try:
        rendered = render(trigger, context, missing=trigger.definition.missing_variables)
    except TemplateProblem as exc:  # its message names the missing path or the limit
        raise HTTPException(422, str(exc)) from exc
    return PreviewOut(
        missing=missing,
        trigger_id=trigger_id,
        customer_id=state.customer_id,
        channel=trigger.channel,
        condition_matches=trigger.condition.matches(condition_context(state, occasion)),
        target=rendered.target,
        payload=rendered.payload,
        payload_json=preview_json(rendered),
    )


def _sample_occasion(
    definition: TriggerDefinition, body: PreviewIn, stage: str | None, scores: dict[str, Any]
) -> Occasion:
    now = datetime.now(UTC)
    if body.event is not None:
        kind, data = body.event.type, body.event.data
    elif isinstance(definition.on, OnTransition):
        kind = "lifecycle.stage_changed"
        data = {
            "from_stage": stage,
            "to_stage": definition.on.to_stage.value,
            "at": now.isoformat(),
        }
    elif isinstance(definition.on, OnEvent):
        kind, data = definition.on.event_type.value, {}
    elif isinstance(definition.on, OnSegment):
        kind = SEGMENT_OCCASIONS[definition.on.kind]
        data = {"segment_id": definition.on.segment_id, "since": now.isoformat()}
    else:
        kind, data = "lifecycle.score_updated", dict(scores)
    return Occasion(
        event_id="preview",
        event_source="clm/campaigns/preview",
        event_type=kind,
        time=now,
        data=data,
    )


@router.get("/triggers/{trigger_id}/stats")
async def trigger_stats(trigger_id: str, session: Session, caller: ReadKey) -> dict[str, Any]:
    """Fired, delivered, failed, suppressed by reason, held out, conversions of treated
    (delivered) and holdout customers within the trigger's window, and the uplift."""
    if not await repository.trigger_exists(session, trigger_id):
        raise HTTPException(404, f"trigger {trigger_id!r} not found")
    c = await repository.trigger_counts(session, trigger_id)
    return {
        "trigger_id": trigger_id,
        **summarize(c.by_status, c.suppressed, c.deferred, Group(*c.treated), Group(*c.holdout)),
    }


@router.get("/triggers/{trigger_id}/stats/series")
async def trigger_stats_series(
    trigger_id: str,
    session: Session,
    caller: ReadKey,
    start: Annotated[
        AwareDatetime | None, Query(alias="from", description="Default: 'to' minus 30 days.")
    ] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to", description="Default: now.")] = None,
    bucket: Annotated[Literal["hour", "day"], Query()] = "day",
) -> dict[str, Any]:
    """The stats over time: per hour or day, actions matched, fired, delivered, failed,
    suppressed and held out (by when they were created) and conversions (by when they
    converted), every bucket present."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=30)
    if start >= end:
        raise unprocessable("query", "from", msg="must be before 'to'")
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    if (end - start) / step > MAX_BUCKETS:
        raise unprocessable(
            "query", "from", msg=f"the window spans more than {MAX_BUCKETS} buckets"
        )
    if not await repository.trigger_exists(session, trigger_id):
        raise HTTPException(404, f"trigger {trigger_id!r} not found")
    points = await repository.trigger_series(session, trigger_id, start, end, bucket)
    return {
        "trigger_id": trigger_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "bucket": bucket,
        "points": points,
    }


MAX_BUCKETS = 1000


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower().replace("'", ""))


# "At risk" as published, or "at_risk" as typed in a URL ("Can't lose": "cant_lose").
_RFM_NAMES = {**{_slug(n): n for n in RFM_SEGMENTS}, **{n: n for n in RFM_SEGMENTS}}


def rfm_segment_names(value: str | None) -> list[str] | None:
    """The RFM segment a filter names; 422 naming `rfm_segment` if none."""
    if value is None:
        return None
    name = _RFM_NAMES.get(value) or _RFM_NAMES.get(_slug(value))
    if name is None:
        known = ", ".join(_slug(n) for n in RFM_SEGMENTS)
        raise unprocessable("query", "rfm_segment", msg=f"not an RFM segment (one of {known})")
    return [name]


@router.get("/customers")
async def find_customers(
    session: Session,
    caller: ReadKey,
    email: Annotated[str | None, Query(min_length=3, max_length=320)] = None,
    stage: Stage | None = None,
    rfm_segment: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str, Query(max_length=256, description="`next` of the previous page")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    """Customers with this email (case-insensitive), from the projection campaigns keeps,
    by id: `{"customers": [{"customer_id", "stage", "since", "email", "name"}],
    "truncated"}`; `truncated` is true when more than `limit` customers have it. Read or
    admin key (ingest resolves an erasure by email through it).

    Without `email`, a filter is required: customers in `stage` and/or the RFM segment
    `rfm_segment` (`at_risk` or "At risk"), by id, a page at a time: `{"customers": [...,
    with "rfm_segment"], "next"}` (pass `next` as `after`)."""
    if email is not None:
        if limit > 100:
            raise unprocessable("query", "limit", msg="at most 100 with email")
        found, truncated = await repository.find_customers_by_email(session, email, limit)
        return {"customers": found, "truncated": truncated}
    if stage is None and rfm_segment is None:
        raise unprocessable("query", "email", msg="give an email, or a stage or rfm_segment filter")
    rows = await repository.list_customers(
        session,
        after=after,
        limit=limit,
        stage=stage.value if stage else None,
        rfm_segments=rfm_segment_names(rfm_segment),
    )
    return {"customers": rows, "next": rows[-1]["customer_id"] if len(rows) == limit else None}


@router.get("/privacy/customers/{customer_id}", tags=["privacy"])
async def export_customer(customer_id: str, session: Session, caller: AdminKey) -> dict[str, Any]:
    """Everything campaigns holds about one id, for a GDPR article 15 export (admin):
    `{"service": "campaigns", "customer_id", "found", "customer", "actions"}`. `customer`
    is the projection (stage and since when, traits, facts, scores, recent purchases) or
    null; `actions` every action recorded for the id, oldest first, with its rendered
    target and payload, status, reasons, attempts, error and times. `found` is false, and
    the sections empty, when nothing is held (never known, or erased)."""
    return await privacy.export(session, customer_id)


@router.get("/actions", response_model=list[ActionOut])
async def list_actions(
    request: Request,
    response: Response,
    session: Session,
    caller: ReadKey,
    # Not '': the customer id of erased customers' anonymous actions.
    customer_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    trigger_id: Annotated[str | None, Query(max_length=256)] = None,
    status: ActionStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=512, description="where the previous page ended")
    ] = None,
) -> list[ActionOut]:
    """Latest actions first, filtered by customer, trigger and status. A full page links
    to the next one (`Link: <...>; rel="next"`, and the cursor in `X-Next-Cursor`)."""
    after = _decode_cursor(cursor) if cursor is not None else None
    rows = await repository.list_actions(
        session,
        customer_id=customer_id,
        trigger_id=trigger_id,
        status=status,
        limit=limit,
        after=after,
    )
    if len(rows) == limit:
        last = rows[-1]
        token = base64.urlsafe_b64encode(
            f"{last['created_at'].isoformat()}|{last['id']}".encode()
        ).decode()
        response.headers["X-Next-Cursor"] = token
        next_url = request.url.include_query_params(cursor=token)
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return [ActionOut(**r) for r in rows]


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a page ended at; 422 naming `cursor` if it is not one."""
    try:
        created_at, action_id = base64.urlsafe_b64decode(cursor).decode().split("|", 1)
        moment = datetime.fromisoformat(created_at)
    except ValueError:  # bad base64, UTF-8, separator or time (binascii.Error is one)
        raise unprocessable("query", "cursor", msg="not a cursor this endpoint returned") from None
    if moment.tzinfo is None or not action_id:
        raise unprocessable("query", "cursor", msg="not a cursor this endpoint returned")
    return moment, action_id
