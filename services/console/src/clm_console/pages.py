"""The console's pages: server-rendered shells that say what each page shows; the data
comes from the services through the proxy, with the key the user signed in with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from clm_events.catalog import DERIVED_TYPES, RFM_SEGMENTS, EventType, Stage

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

STAGE_LABELS = {
    "prospect": "Prospect",
    "onboarding": "Onboarding",
    "active": "Active",
    "loyal": "Loyal",
    "advocate": "Advocate",
    "at_risk": "At risk",
    "lapsed": "Lapsed",
    "won_back": "Won back",
}


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    title: str
    nav: str


PAGES = (
    Page("overview", "/", "Lifecycle overview", "Overview"),
    Page("customers", "/customers", "Customer", "Customers"),
    Page("triggers", "/triggers", "Triggers", "Triggers"),
    Page("results", "/results", "Trigger results", "Results"),
    Page("journeys", "/journeys", "Journeys", "Journeys"),
    Page("segments", "/segments", "Segments", "Segments"),
    Page("rfm", "/rfm", "RFM segments", "RFM"),
    Page("deadletters", "/dead-letters", "Dead letters", "Dead letters"),
    Page("model", "/model", "Lifecycle model", "Lifecycle model"),
)
_BY_NAME = {p.name: p for p in PAGES}


def _render(request: Request, template: str, page: str, **context: object) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {
            "page": page,
            "title": _BY_NAME[page].title if page in _BY_NAME else context.get("title", "CLM"),
            "pages": PAGES,
            "stages": [s.value for s in Stage],
            "stage_labels": STAGE_LABELS,
            "event_types": [t.value for t in EventType if t not in DERIVED_TYPES],
            "rfm_segments": list(RFM_SEGMENTS),
            **context,
        },
        headers={"cache-control": "no-store"},
    )


@router.get("/login", response_class=HTMLResponse)
async def login(request: Request) -> HTMLResponse:
    return _render(request, "login.html", "login", title="Sign in")


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    return _render(request, "overview.html", "overview")


@router.get("/customers", response_class=HTMLResponse)
async def customers(request: Request) -> HTMLResponse:
    return _render(request, "customers.html", "customers")


@router.get("/triggers", response_class=HTMLResponse)
async def triggers(request: Request) -> HTMLResponse:
    return _render(request, "triggers.html", "triggers")


@router.get("/triggers/new", response_class=HTMLResponse)
async def new_trigger(request: Request) -> HTMLResponse:
    return _render(request, "trigger.html", "triggers", trigger_id="", title="New trigger")


@router.get("/triggers/{trigger_id}", response_class=HTMLResponse)
async def edit_trigger(
    request: Request, trigger_id: Annotated[str, PathParam(max_length=100)]
) -> HTMLResponse:
    return _render(request, "trigger.html", "triggers", trigger_id=trigger_id, title="Trigger")


@router.get("/results", response_class=HTMLResponse)
async def results(request: Request) -> HTMLResponse:
    return _render(request, "results.html", "results")


@router.get("/journeys", response_class=HTMLResponse)
async def journeys(request: Request) -> HTMLResponse:
    return _render(request, "journeys.html", "journeys")


@router.get("/journeys/new", response_class=HTMLResponse)
async def new_journey(request: Request) -> HTMLResponse:
    return _render(request, "journey.html", "journeys", journey_id="", title="New journey")


@router.get("/journeys/{journey_id}", response_class=HTMLResponse)
async def journey(
    request: Request, journey_id: Annotated[str, PathParam(max_length=64)]
) -> HTMLResponse:
    return _render(request, "journey.html", "journeys", journey_id=journey_id, title="Journey")


@router.get("/segments", response_class=HTMLResponse)
async def segments(request: Request) -> HTMLResponse:
    return _render(request, "segments.html", "segments")


@router.get("/segments/new", response_class=HTMLResponse)
async def new_segment(request: Request) -> HTMLResponse:
    return _render(request, "segment.html", "segments", segment_id="", title="New segment")


@router.get("/segments/{segment_id}", response_class=HTMLResponse)
async def segment(
    request: Request, segment_id: Annotated[str, PathParam(max_length=100)]
) -> HTMLResponse:
    return _render(request, "segment.html", "segments", segment_id=segment_id, title="Segment")


@router.get("/rfm", response_class=HTMLResponse)
async def rfm(request: Request) -> HTMLResponse:
    return _render(request, "rfm.html", "rfm")


@router.get("/dead-letters", response_class=HTMLResponse)
async def deadletters(request: Request) -> HTMLResponse:
    return _render(request, "deadletters.html", "deadletters")


@router.get("/model", response_class=HTMLResponse)
async def model(request: Request) -> HTMLResponse:
    return _render(request, "model.html", "model")
