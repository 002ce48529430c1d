"""Helpers of the fuzz tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from kit import running

from clm_devstack.procs import free_port


@asynccontextmanager
async def serving(
    package: str, database_url: str, bootstrap: str, **settings: Any
) -> AsyncIterator[tuple[str, Any]]:
    """The service running (kit.running, with its keyword arguments) and served over HTTP;
    yields its base URL and Runtime."""
    async with running(package, database_url, bootstrap, **settings) as (client, runtime):
        transport = client._transport  # the app kit.running built and started
        assert isinstance(transport, httpx.ASGITransport)
        port = free_port("127.0.0.1")
        config = uvicorn.Config(
            transport.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
            yield f"http://127.0.0.1:{port}", runtime
        finally:
            server.should_exit = True
            await task
