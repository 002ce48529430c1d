"""HTTP API: thin routers over the repository and the pure domain."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_events.auth import AdminKey, ReadKey
from clm_events.catalog import Stage
from clm_events.errors import unprocessable
from clm_events.scoremodel import ServedModel
from clm_stage_engine import kpis
from clm_stage_engine import repository as repo
from clm_stage_engine.domain.facts import Accumulator, to_json
from clm_stage_engine.domain.inputs import US_PER_DAY, from_us, to_us
from clm_stage_engine.domain.model import VARIABLES, ModelError, ModelSpec, Rule, compile_model
from clm_stage_engine.domain.timeline import reevaluate
from clm_stage_engine.handlers import load_timelines

router = APIRouter(prefix="/v1")
CustomerId = Annotated[str, Path(min_length=1, max_length=256)]
MAX_WINDOW = timedelta(days=3660)


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    return request.app.state.runtime.sessions  # type: ignore[no-any-return]


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


# -- customers -----------------------------------------------------------------------


@router.get("/customers/{customer_id}", tags=["customers"])
async def get_customer(customer_id: CustomerId, request: Request, _: ReadKey) -> dict[str, Any]:
    """Stage, since when, the facts as of now, the latest scores and the anonymous ids
    merged into the customer. A merged anonymous id answers with its customer."""
    async with _sessions(request)() as session:
        merged_into = (await repo.links_of(session, [customer_id])).get(customer_id)
        requested, customer_id = customer_id, merged_into or customer_id
        row = await repo.get_customer(session, customer_id)
        if row is None:
            raise HTTPException(404, f"no customer '{requested}'")
        linked = await repo.linked_ids(session, customer_id)
        out = await _customer_out(request, session, row)
    return {
        **out,
        "linked_ids": [{"anonymous_id": a, "linked_at": _iso(at)} for a, at in linked],
        **({"requested_id": requested} if requested != customer_id else {}),
    }


async def _customer_out(request: Request, session: AsyncSession, row: Any) -> dict[str, Any]:
    """A stored customer as the API shows them: stage, clocks, facts and scores as of now."""
    stored = {row.customer_id: (row.timeline, row.evaluated_until)}
    tl = (await load_timelines(session, stored))[row.customer_id]
    served = (await request.app.state.stage_engine.models.current(session)).served
    acc = tl.fold()  # every input, as of the clock
    now = max(to_us(datetime.now(UTC)), tl.evaluated_until or 0)
    return {
        "customer_id": row.customer_id,
        "stage": row.stage,
        "since": _iso(row.stage_since),
        "evaluated_until": _iso(row.evaluated_until),
        # When the timer next looks at the customer: the first tick at which time alone
        # could move them, or a re-check where its look-ahead ended; null if time cannot.
        "next_check_at": _iso(row.due_at),
        "model_version": row.model_version,
        # Facts and scores as of now: the scores the rules read, under the served model.
        "facts": to_json(acc.with_scores(acc.facts(now), now, served)),
        "scores": scores_out(acc, now, served),
    }


def scores_out(acc: Accumulator, now: int, served: ServedModel | None) -> dict[str, Any] | None:
    """The customer's scores as of `now`, as scoring's API gives them for that day."""
    summary = acc.score_summary(now)
    if served is None or summary is None:
        return None
    s = served.score(summary)
    return {
        "p_alive": s.p_alive,
        "churn_probability": s.churn_probability,
        "expected_purchases": s.expected_purchases,
        "expected_spend": s.expected_spend,
        "clv": round(s.clv, 2),
        "model": served.model,
        "score_model_version": served.version,
        "as_of": from_us(now - now % US_PER_DAY).date().isoformat(),
    }


@router.get("/customers/{customer_id}/transitions", tags=["customers"])
async def get_transitions(
    customer_id: CustomerId,
    request: Request,
    _: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The customer's stage history, oldest first."""
    async with _sessions(request)() as session:
        if await repo.get_customer(session, customer_id) is None:
            raise HTTPException(404, f"no customer '{customer_id}'")
        rows = await repo.list_transitions(session, customer_id, limit, offset)
    return {"customer_id": customer_id, "transitions": [_transition_out(r) for r in rows]}


def _transition_out(r: Any) -> dict[str, Any]:
    return {
        "id": r.transition_id,
        "at": _iso(r.at),
        "from_stage": r.from_stage,
        "to_stage": r.to_stage,
        "cause": r.cause,
        "cause_event": (
            {"source": r.event_source, "id": r.event_id, "type": r.event_type}
            if r.event_id
            else None
        ),
        "model_version": r.model_version,
        "facts": r.facts,
    }


# -- privacy -------------------------------------------------------------------------


@router.get("/privacy/customers/{customer_id}", tags=["privacy"])
async def export_customer(customer_id: CustomerId, request: Request, _: AdminKey) -> dict[str, Any]:
    """Everything the stage engine holds under this id, for a data subject's access
    request (ingest assembles every service's into one export): `customer` (stage,
    clocks, facts and scores as of now, or null), `transitions` (the whole stage history
    with each one's deciding facts), `inputs` (what was kept of each event: source, event
    id, time, type and data), `linked_ids` (anonymous ids merged into this id) and
    `merged_into` (the customer this id, an anonymous one, was merged into, or null).
    `found` is false, with empty sections, when nothing is held (an unknown or erased id).
    """
    async with _sessions(request)() as session:
        # One snapshot for every section, so a concurrent event cannot split them.
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        row = await repo.get_customer(session, customer_id)
        customer = await _customer_out(request, session, row) if row is not None else None
        transitions = await repo.list_transitions(session, customer_id)
        inputs = await repo.list_inputs(session, customer_id)
        linked = await repo.linked_ids(session, customer_id)
        merged_into = (await repo.links_of(session, [customer_id])).get(customer_id)
    return {
        "service": request.app.state.runtime.name,
        "customer_id": customer_id,
        "found": bool(customer or transitions or inputs or linked or merged_into),
        "customer": customer,
        "transitions": [_transition_out(r) for r in transitions],
        "inputs": [_input_out(r) for r in inputs],
        "linked_ids": [{"anonymous_id": a, "linked_at": _iso(at)} for a, at in linked],
        "merged_into": merged_into,
    }


def _input_out(r: Any) -> dict[str, Any]:
    _, _, _, kind, data = json.loads(r.input)  # domain.inputs.Input.to_json
    return {
        "source": r.source,
        "event_id": r.event_id,
        "time": _iso(from_us(r.at)),
        "type": kind,
        "data": data,
    }


# -- statistics ----------------------------------------------------------------------


@router.get("/stages", tags=["statistics"])
async def get_stages(request: Request, _: ReadKey) -> dict[str, Any]:
    """How many customers are in each stage now."""
    async with _sessions(request)() as session:
        counts = await repo.stage_counts(session)
    stages = {s.value: counts.get(s.value, 0) for s in Stage}
    return {"stages": stages, "total": sum(stages.values())}


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=30)
    if start >= end:
        raise unprocessable("query", "from", msg="'from' must be before 'to'")
    if end - start > MAX_WINDOW:
        raise unprocessable(
            "query", "from", msg="the window from 'from' to 'to' may span at most 3660 days"
        )
    return start, end


From = Annotated[
    AwareDatetime | None,
    Query(alias="from", description="Window start (RFC 3339); default 'to' minus 30 days."),
]
To = Annotated[AwareDatetime | None, Query(alias="to", description="Window end; default now.")]


@router.get("/flows", tags=["statistics"])
async def get_flows(
    request: Request, _: ReadKey, start: From = None, end: To = None
) -> dict[str, Any]:
    """Transition counts between stages with `from` <= at < `to`."""
    start, end = _window(start, end)
    async with _sessions(request)() as session:
        rows = await repo.flows(session, start, end)
    return {
        "from": _iso(start),
        "to": _iso(end),
        "flows": [{"from_stage": f, "to_stage": t, "count": n} for f, t, n in rows],
    }


@router.get("/kpis", tags=["statistics"])
async def get_kpis(
    request: Request, _: ReadKey, start: From = None, end: To = None
) -> dict[str, Any]:
    """Lifecycle KPIs over a window (default the last 30 days): customer retention rate,
    churn rate, prospect-to-customer conversion, average CLV per stage and NPS."""
    start, end = _window(start, end)
    async with _sessions(request)() as session:
        return {"from": _iso(start), "to": _iso(end), **await kpis.over(session, start, end)}


# -- lifecycle model -----------------------------------------------------------------


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=100)]
    to: Annotated[str, Field(min_length=1, max_length=64)]
    when: Annotated[str, Field(min_length=1, max_length=2000, description="CEL over facts")]
    from_: Annotated[list[str] | None, Field(alias="from", max_length=20)] = None


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: Annotated[list[str], Field(min_length=1, max_length=20)]
    rules: Annotated[list[RuleIn], Field(max_length=100)]

    def spec(self) -> ModelSpec:
        return ModelSpec(
            tuple(self.stages),
            tuple(
                Rule(r.name, r.to, r.when, tuple(r.from_) if r.from_ is not None else None)
                for r in self.rules
            ),
        )


def _model_out(row: repo.ModelRow) -> dict[str, Any]:
    return {
        "version": row.version,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        **row.spec,
        # What rules reading scores evaluate under (null until scoring served one).
        "score_model": row.score_model,
    }


async def _current(request: Request, session: AsyncSession) -> repo.ModelRow:
    await request.app.state.stage_engine.models.current(session)  # creates v1 if none
    row = await repo.get_model(session)
    assert row is not None
    return row


@router.get("/lifecycle-model", tags=["lifecycle model"])
async def get_model(request: Request, _: ReadKey) -> dict[str, Any]:
    """The current model: stages and ordered rules (CEL), plus the variables rules see."""
    async with _sessions(request)() as session, session.begin():
        row = await _current(request, session)
    return {
        **_model_out(row),
        "variables": {n: {"type": t, "meaning": m} for n, (t, m) in VARIABLES.items()},
    }


@router.get("/lifecycle-model/versions", tags=["lifecycle model"])
async def list_models(request: Request, _: ReadKey) -> dict[str, Any]:
    """Every version, newest first."""
    async with _sessions(request)() as session, session.begin():
        await _current(request, session)
        rows = await repo.list_models(session)
    return {"versions": [_model_out(r) for r in rows]}


@router.get("/lifecycle-model/versions/{version}", tags=["lifecycle model"])
async def get_model_version(
    version: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, _: ReadKey
) -> dict[str, Any]:
    async with _sessions(request)() as session:
        row = await repo.get_model(session, version)
    if row is None:
        raise HTTPException(404, f"no lifecycle model version {version}")
    return _model_out(row)


# Small pages, yielding between them, so a dry run never holds the event loop for long.
DRY_RUN_PAGE = 500


@router.post(
    "/lifecycle-model/dry-run",
    tags=["lifecycle model"],
    responses={422: {"description": "invalid model, as for PUT"}},
)
async def dry_run_model(
    body: ModelIn,
    request: Request,
    caller: AdminKey,
    max_customers: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000,
) -> JSONResponse:
    """How many customers a model would move if it were saved now, and between which
    stages: each customer is evaluated under it as the model-change sweep would, and
    nothing is stored or published. Evaluates at most `max_customers` (in id order;
    `complete` says whether that was everyone)."""
    spec = body.spec()
    async with _sessions(request)() as session, session.begin():
        served = (await request.app.state.stage_engine.models.current(session)).served
    try:
        draft = compile_model(spec, 0, served)
    except ModelError as exc:
        return _invalid(exc)
    clock = to_us(datetime.now(UTC))
    moves: dict[tuple[str | None, str], int] = {}
    evaluated, after, complete = 0, "", True
    while True:
        async with _sessions(request)() as session:
            page = await repo.page_of_customers(
                session, after, min(DRY_RUN_PAGE, max_customers - evaluated)
            )
            timelines = await load_timelines(session, dict(page))
        for tl in timelines.values():
            before = tl.stage
            for t in reevaluate(tl, draft, clock).added:
                moves[(before, t.to_stage)] = moves.get((before, t.to_stage), 0) + 1
        evaluated += len(page)
        await asyncio.sleep(0)
        if len(page) < DRY_RUN_PAGE:
            break
        after = max(page)
        if evaluated >= max_customers:
            async with _sessions(request)() as session:
                complete = not await repo.page_of_customers(session, after, 1)
            break
    ranked = sorted(moves.items(), key=lambda kv: -kv[1])
    return JSONResponse(
        {
            "valid": True,
            "customers_evaluated": evaluated,
            "complete": complete,
            "would_move": sum(moves.values()),
            "moves": [{"from_stage": f, "to_stage": t, "count": n} for (f, t), n in ranked],
            "as_of": _iso(datetime.now(UTC)),
        }
    )


def _invalid(exc: ModelError) -> JSONResponse:
    return JSONResponse(
        {
            "detail": f"invalid lifecycle model: {exc}",
            "errors": [{"path": p, "reason": r} for p, r in exc.errors],
        },
        status_code=422,
    )


@router.put(
    "/lifecycle-model",
    tags=["lifecycle model"],
    responses={422: {"description": "invalid model: each error names the field and reason"}},
)
async def put_model(body: ModelIn, request: Request, caller: AdminKey) -> JSONResponse:
    """Replace the model. Every expression is compiled and checked first; a valid model
    becomes a new version, and every customer is re-evaluated under it in the
    background (resulting transitions have cause `model_change`)."""
    spec = body.spec()
    try:
        compile_model(spec, 0)
    except ModelError as exc:
        return _invalid(exc)
    async with _sessions(request)() as session, session.begin():
        await _current(request, session)
        version = await repo.add_model(
            session, caller.id, spec=json.loads(json.dumps(spec.to_json()))
        )
        row = await repo.get_model(session, version)
    assert row is not None
    return JSONResponse(_model_out(row), status_code=200)
