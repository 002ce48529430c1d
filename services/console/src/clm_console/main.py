"""The console app: pages, static files (its own JS and CSS, and plotly.js from the plotly
wheel), the API proxy, `/v1/whoami`, and the probes every CLM service has."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import plotly
from fastapi import FastAPI, Response
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clm_console import pages, proxy
from clm_console.config import Settings
from clm_events import db
from clm_events.auth import KeyStore, ReadKey
from clm_events.logs import configure_logging
from clm_events.service import HttpMetrics

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
# Plotly sets inline styles on the charts it draws; nothing else is inline.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    common = settings.common
    configure_logging(service="console", level=common.log_level, json=common.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied call otherwise
    # The console reads the shared key table only, to tell a signed-in user their role.
    engine = db.create_engine(common.database_url, pool_size=2, application_name="console")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            timeout=settings.proxy_timeout, follow_redirects=False
        ) as client:
            app.state.client = client
            log.info("started", extra={"port": settings.port})
            try:
                yield
            finally:
                await engine.dispose()

    app = FastAPI(title="CLM console", lifespan=lifespan)
    app.state.settings = settings
    app.state.keys = KeyStore(db.session_factory(engine))
    app.add_middleware(HttpMetrics, service="console")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(GZipMiddleware, minimum_size=1024)  # plotly.min.js is 4.8 MB raw

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Alive: the process serves requests."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Ready when the key table answers (sign-in needs it); each service's health is
        reported too but does not make the console unready."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(db.ping(engine), timeout=2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        services = await _service_health(app.state.client, settings.backends())
        ok = checks["database"] == "ok"
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks, "services": services},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/whoami", tags=["console"])
    async def whoami(caller: ReadKey) -> dict[str, Any]:
        """The signed-in key: its id, name and role (read keys see, admin keys change)."""
        return {"id": caller.id, "name": caller.name, "role": caller.role.value}

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        return FileResponse(
            PLOTLY_JS,
            media_type="text/javascript",
            headers={"cache-control": "public, max-age=86400"},
        )

    app.include_router(proxy.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _service_health(client: httpx.AsyncClient, backends: dict[str, str]) -> dict[str, str]:
    async def one(url: str) -> str:
        try:
            answer = await client.get(f"{url.rstrip('/')}/healthz", timeout=2.0)
        except httpx.HTTPError as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok" if answer.status_code == 200 else f"status {answer.status_code}"

    names = list(backends)
    results = await asyncio.gather(*(one(backends[n]) for n in names))
    return dict(zip(names, results, strict=True))


class SecurityHeaders:
    """The console shows personal data: no framing, no sniffing, no third-party origins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)
