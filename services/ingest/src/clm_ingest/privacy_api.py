"""HTTP for privacy requests (admin key): erase a customer everywhere, follow the
request, and export what every service holds about a customer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, StringConstraints, model_validator

from clm_events.auth import AdminKey
from clm_events.catalog import Id
from clm_events.service import Runtime
from clm_ingest import privacy, repository
from clm_ingest.config import Settings

router = APIRouter(prefix="/v1/privacy", tags=["privacy"])
CustomerId = Annotated[str, Path(min_length=1, max_length=256)]
Email = Annotated[str, StringConstraints(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


class ErasureBody(BaseModel):
    customer_id: Id | None = Field(
        None, description="Erase this customer (or the customer this anonymous id is linked to)."
    )
    email: Email | None = Field(None, description="Erase every customer carrying this email.")

    @model_validator(mode="after")
    def _one_selector(self) -> ErasureBody:
        if (self.customer_id is None) == (self.email is None):
            raise ValueError("give exactly one of customer_id and email")
        return self


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _settings(rt: Runtime) -> Settings:
    assert isinstance(rt.settings, Settings)
    return rt.settings


def _services(rt: Runtime) -> list[str]:
    return [privacy.SERVICE, *_settings(rt).privacy_urls]


@router.post("/erasures", status_code=202)
async def request_erasure(request: Request, body: ErasureBody, caller: AdminKey) -> dict[str, Any]:
    """Erase a customer in every service (GDPR art. 17): by id, with every anonymous id
    linked to it, or by email, every customer carrying it. Answers at once with the
    request; `GET /v1/privacy/erasures/{request_id}` follows it to completion."""
    rt = _runtime(request)
    settings = _settings(rt)
    async with rt.sessions() as session, session.begin():
        if body.customer_id is not None:
            ids = await privacy.ids_of_customer(session, body.customer_id)
        else:
            assert body.email is not None
            try:
                found = await privacy.customers_with_email(
                    settings.campaigns_url,
                    body.email,
                    request.headers["authorization"],
                    settings.privacy_timeout,
                )
            except privacy.ServiceUnavailable as exc:
                raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
            except privacy.TooMany as exc:
                raise HTTPException(409, str(exc)) from exc
            if not found:
                raise HTTPException(404, "no customer carries this email")
            ids = []
            for customer in found:
                ids += [i for i in await privacy.ids_of_customer(session, customer) if i not in ids]
        row = await privacy.request_erasure(
            session,
            rt.topics.privacy,
            ids,
            requested_by=caller.id,
            selector="customer_id" if body.customer_id is not None else "email",
        )
    if rt.relay is not None:
        rt.relay.wake()
    return {**privacy.describe_request(row, _services(rt)), "customer_ids": ids}


@router.get("/erasures")
async def list_erasures(
    request: Request,
    caller: AdminKey,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[
        str | None, Query(max_length=100, description="`next` of the last page.")
    ] = None,
) -> dict[str, Any]:
    """The audit trail, newest first: who asked, when, and which services finished."""
    rt = _runtime(request)
    async with rt.sessions() as session:
        rows = await repository.erasure_requests_page(session, limit, before)
    return {
        "erasures": [privacy.describe_request(r, _services(rt)) for r in rows],
        "next": rows[-1].request_id if len(rows) == limit else None,
    }


@router.get("/erasures/{request_id}")
async def erasure_status(
    request: Request, caller: AdminKey, request_id: Annotated[str, Path(max_length=100)]
) -> dict[str, Any]:
    """One request: per service, when it finished and how many rows it erased."""
    rt = _runtime(request)
    async with rt.sessions() as session:
        row = await repository.erasure_request(session, request_id)
    if row is None:
        raise HTTPException(404, f"no erasure request {request_id!r}")
    return privacy.describe_request(row, _services(rt))


@router.get("/exports/{customer_id}")
async def export_customer(
    request: Request, caller: AdminKey, customer_id: CustomerId
) -> dict[str, Any]:
    """Everything CLM holds about the customer (GDPR art. 15), one JSON document from
    every service's own answer: traits, facts, stage history, inputs, orders, scores,
    actions with their payloads, identity links and dead letters. 503 naming the service
    if one does not answer: an export missing a part would look complete."""
    rt = _runtime(request)
    settings = _settings(rt)
    async with rt.sessions() as session:
        mine = await privacy.ingest_part(session, customer_id)
    try:
        return await privacy.export(
            customer_id,
            mine,
            settings.privacy_urls,
            request.headers["authorization"],
            settings.privacy_timeout,
        )
    except privacy.ServiceUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
