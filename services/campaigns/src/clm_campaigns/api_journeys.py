"""HTTP API of journeys (admin keys change them, read keys read them), a customer's
journeys with the reason for each one they are not on, and clock control."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field, ValidationError

from clm_campaigns import repository
from clm_campaigns.api import Session, _masked
from clm_campaigns.domain.journeys import JourneyDefinition, SendStep, definition_json
from clm_campaigns.domain.stats import Group, two_proportions
from clm_events.auth import AdminKey, ReadKey

router = APIRouter(prefix="/v1", tags=["journeys"])
KIND = repository.JOURNEYS


class JourneyIn(JourneyDefinition):
    enabled: bool = True

    def definition(self) -> JourneyDefinition:
        return JourneyDefinition.model_validate(self.model_dump(exclude={"enabled"}, by_alias=True))


class JourneyOut(BaseModel):
    id: str
    version: int
    enabled: bool
    updated_by: str
    definition: dict[str, Any] = Field(description="Webhook secrets are masked.")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Generated webhook secrets by step id, shown once in the response.",
    )
    in_flight: dict[int, int] = Field(
        default_factory=dict,
        description="Runs under way by the version they entered with: each finishes on it.",
    )


def _masked_steps(definition: dict[str, Any]) -> dict[str, Any]:
    return {**definition, "steps": [_masked(s) for s in definition["steps"]]}


def _out(row: repository.TriggerRow, **extra: Any) -> JourneyOut:
    return JourneyOut(
        id=row.id,
        version=row.version,
        enabled=row.enabled,
        updated_by=row.updated_by,
        definition=_masked_steps(row.definition),
        **extra,
    )


def _with_secrets(
    definition: JourneyDefinition, previous: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The definition to store, each webhook step with a secret: given, kept from the
    same step of the previous version, or generated (returned to show once)."""
    data = definition_json(definition)
    old = {s["id"]: s for s in (previous or {}).get("steps", [])}
    made: dict[str, str] = {}
    for step, model in zip(data["steps"], definition.steps, strict=True):
        if not isinstance(model, SendStep) or step["action"]["channel"] != "webhook":
            continue
        if step["action"].get("secret"):
            continue
        kept = old.get(step["id"], {}).get("action", {}).get("secret")
        step["action"]["secret"] = kept or (
            "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        )
        if not kept:
            made[step["id"]] = step["action"]["secret"]
    return data, made


async def _current(session: Any, journey_id: str, *, lock: bool = False) -> repository.TriggerRow:
    row = await repository.get_trigger(session, journey_id, for_update=lock, kind=KIND)
    if row is None:
        raise HTTPException(404, f"journey {journey_id!r} not found")
    return row


@router.post("/journeys", status_code=201, response_model=JourneyOut)
async def create_journey(body: JourneyIn, session: Session, caller: AdminKey) -> JourneyOut:
    """Create a journey (version 1); generated webhook secrets are shown once."""
    data, made = _with_secrets(body.definition(), None)
    row = await repository.insert_trigger(
        session,
        trigger_id=f"jrn_{secrets.token_hex(8)}",
        definition=data,
        enabled=body.enabled,
        by=caller.id,
        kind=KIND,
    )
    return _out(row, secrets=made)


@router.post("/journeys/validate")
async def validate_journey(body: dict[str, Any], caller: AdminKey) -> dict[str, Any]:
    """Check a draft as create would and store nothing: `{"valid", "errors"}`."""
    try:
        JourneyIn.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return {
            "valid": False,
            "errors": [
                {
                    "path": ".".join(str(p) for p in e["loc"]),
                    "reason": e["msg"].removeprefix("Value error, "),  # says nothing to a reader
                }
                for e in errors
            ],
        }
    return {"valid": True, "errors": []}


@router.get("/journeys", response_model=list[JourneyOut])
async def list_journeys(session: Session, caller: ReadKey) -> list[JourneyOut]:
    return [_out(r) for r in await repository.list_triggers(session, kind=KIND)]


@router.get("/journeys/{journey_id}", response_model=JourneyOut)
async def get_journey(
    journey_id: str, session: Session, caller: ReadKey, response: Response
) -> JourneyOut:
    row = await _current(session, journey_id)
    response.headers["ETag"] = f'"{row.version}"'
    return _out(row, in_flight=await repository.runs_in_flight(session, journey_id))


@router.put("/journeys/{journey_id}", response_model=JourneyOut)
async def replace_journey(
    journey_id: str, body: JourneyIn, session: Session, caller: AdminKey
) -> JourneyOut:
    """A new version. Customers on the way finish on the version they entered with, so
    a step removed here still runs for those waiting on it; `in_flight` says how many
    runs each older version still has."""
    row = await _current(session, journey_id, lock=True)
    data, made = _with_secrets(body.definition(), row.definition)
    new = await repository.change_trigger(
        session, row, change="updated", by=caller.id, definition=data, enabled=body.enabled,
        kind=KIND,
    )  # fmt: skip
    return _out(new, secrets=made, in_flight=await repository.runs_in_flight(session, journey_id))


async def _set_enabled(session: Any, journey_id: str, caller: Any, enabled: bool) -> JourneyOut:
    row = await _current(session, journey_id, lock=True)
    if row.enabled != enabled:
        change = "enabled" if enabled else "disabled"
        row = await repository.change_trigger(
            session, row, change=change, by=caller.id, enabled=enabled, kind=KIND
        )
    return _out(row)


@router.post("/journeys/{journey_id}/enable", response_model=JourneyOut)
async def enable_journey(journey_id: str, session: Session, caller: AdminKey) -> JourneyOut:
    return await _set_enabled(session, journey_id, caller, True)


@router.post("/journeys/{journey_id}/disable", response_model=JourneyOut)
async def disable_journey(journey_id: str, session: Session, caller: AdminKey) -> JourneyOut:
    """Nobody enters any more; runs under way exit (`journey_disabled`) when next due."""
    return await _set_enabled(session, journey_id, caller, False)


@router.delete("/journeys/{journey_id}", status_code=204)
async def delete_journey(journey_id: str, session: Session, caller: AdminKey) -> Response:
    row = await _current(session, journey_id, lock=True)
    await repository.change_trigger(
        session, row, change="deleted", by=caller.id, delete=True, kind=KIND
    )
    return Response(status_code=204)


@router.get("/journeys/{journey_id}/versions")
async def journey_versions(
    journey_id: str, session: Session, caller: ReadKey
) -> list[dict[str, Any]]:
    versions = await repository.list_versions(session, journey_id, kind=KIND)
    if not versions:
        raise HTTPException(404, f"journey {journey_id!r} not found")
    return [{**v, "definition": _masked_steps(v["definition"])} for v in versions]


@router.get("/journeys/{journey_id}/stats")
async def journey_stats(journey_id: str, session: Session, caller: ReadKey) -> dict[str, Any]:
    """Per step: runs through it by outcome, waiting on it now, the latest a due step
    ran after its time; runs by status and exit reason; per split arm: runs, conversions
    within the journey's window, and each arm against the first (difference of rates,
    95% interval, two-proportion z-test)."""
    if not await repository.trigger_exists(session, journey_id, kind=KIND):
        raise HTTPException(404, f"journey {journey_id!r} not found")
    f = await repository.journey_funnel(session, journey_id)
    steps: dict[str, dict[str, Any]] = {}
    for step_id, outcome, count, latest in f["steps"]:
        s = steps.setdefault(step_id, {"through": 0, "outcomes": {}, "max_late_seconds": 0.0})
        s["through"] += count
        s["outcomes"][outcome] = count
        s["max_late_seconds"] = max(s["max_late_seconds"], latest or 0.0)
    for step_id, count in f["waiting"].items():
        steps.setdefault(step_id, {"through": 0, "outcomes": {}, "max_late_seconds": 0.0})
        steps[step_id]["waiting"] = count
    runs: dict[str, Any] = {"entered": 0, "converted": 0, "by_status": {}, "exited": {}}
    for status, reason, count, converted in f["runs"]:
        runs["entered"] += count
        runs["converted"] += converted
        runs["by_status"][status] = runs["by_status"].get(status, 0) + count
        if status == "exited":
            runs["exited"][reason or "unknown"] = count
    splits: dict[str, list[dict[str, Any]]] = {}
    for step_id, outcome, count, converted in sorted(f["arms"]):
        arm = outcome.removeprefix("arm:")
        group = Group(count, converted)
        splits.setdefault(step_id, []).append(
            {"arm": arm, "runs": count, "converted": converted, "rate": group.rate}
        )
    for arms in splits.values():
        first = Group(arms[0]["runs"], arms[0]["converted"])
        for arm in arms[1:]:
            arm["against_" + arms[0]["arm"]] = two_proportions(
                Group(arm["runs"], arm["converted"]), first
            )
    return {"journey_id": journey_id, "runs": runs, "steps": steps, "splits": splits}


@router.get("/customers/{customer_id}/journeys")
async def customer_journeys(
    customer_id: str, session: Session, caller: ReadKey
) -> list[dict[str, Any]]:
    """For every journey: the customer's runs (where they are, how each ended), and for a
    journey they are not on, why: the last occasion that could have entered them and the
    reason it did not (condition_false with the values it saw, reentry_limit, stale,
    backfill), or `no_matching_occasion` when nothing ever matched the entry."""
    runs = await repository.customer_runs(session, customer_id)
    decisions = await repository.customer_decisions(session, customer_id)
    out = []
    for row in await repository.list_triggers(session, kind=KIND):
        mine = [r for r in runs if r["journey_id"] == row.id]
        entry = row.definition["entry"]
        item: dict[str, Any] = {"journey_id": row.id, "name": row.definition["name"]}
        item["runs"] = [{k: v for k, v in r.items() if k != "journey_id"} for r in mine]
        item["entered"] = bool(mine)
        if row.id in decisions:
            d = decisions[row.id]
            item["not_entered"] = {"reason": d["reason"], "at": d["at"], **d["detail"]}
        elif not mine:
            item["not_entered"] = {"reason": "no_matching_occasion", "entry": entry["on"]}
        out.append(item)
    return out


class ClockIn(BaseModel):
    advance_seconds: float = Field(gt=0, le=10 * 365 * 86_400)


@router.get("/clock")
async def get_clock(request: Request, caller: ReadKey) -> dict[str, Any]:
    clock = request.app.state.clock
    return {"now": clock.now(), "offset_seconds": clock.offset.total_seconds(),
            "controlled": clock.controlled}  # fmt: skip


@router.post("/clock")
async def advance_clock(
    body: ClockIn, request: Request, session: Session, caller: AdminKey
) -> dict[str, Any]:
    """Move the service's time forward (every replica, within a second). Only with
    CLM_CAMPAIGNS_CLOCK_CONTROL=true: tests and demos, never production."""
    clock = request.app.state.clock
    if not clock.controlled:
        raise HTTPException(403, "clock control is off (CLM_CAMPAIGNS_CLOCK_CONTROL)")
    now = await clock.advance(session, body.advance_seconds)
    request.app.state.journeys.wake()
    request.app.state.dispatcher.wake()
    return {"now": now, "offset_seconds": clock.offset.total_seconds(), "controlled": True}
