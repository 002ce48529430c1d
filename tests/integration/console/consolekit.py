"""The console in-process, its proxy wired to services running in-process too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from clm_console.config import Settings
from clm_console.main import create_app
from clm_events.settings import ClmSettings

Handler = Callable[[httpx.Request], httpx.Response]


class Backends(httpx.AsyncBaseTransport):
    """Routes the proxy's requests by host (`http://<service>.test`) to a test client of
    that service (see kit.running) or to a stub; records what it was asked."""

    def __init__(self) -> None:
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.stubs: dict[str, Handler] = {}
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        service = request.url.host.removesuffix(".test")
        if service in self.stubs:
            return self.stubs[service](request)
        client = self.clients.get(service)
        if client is None:
            raise httpx.ConnectError("no such service", request=request)
        answer = await client.send(
            client.build_request(
                request.method,
                request.url.copy_with(scheme="http", host="svc"),
                headers=request.headers,
                content=request.content,
            )
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@asynccontextmanager
async def console(
    database_url: str, **overrides: object
) -> AsyncIterator[tuple[httpx.AsyncClient, Backends]]:
    settings = Settings(
        ingest_url="http://ingest.test",
        stage_engine_url="http://stage-engine.test",
        scoring_url="http://scoring.test",
        campaigns_url="http://campaigns.test",
        common=ClmSettings(database_url=database_url, log_json=False),
        **overrides,  # type: ignore[arg-type]
    )
    app: FastAPI = create_app(settings)
    backends = Backends()
    async with app.router.lifespan_context(app):
        app.state.client = httpx.AsyncClient(transport=backends, timeout=settings.proxy_timeout)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            yield client, backends
        await app.state.client.aclose()
