"""What the browser tests share: the running console and how to feed it events."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class Console:
    url: str
    ingest_url: str
    database_url: str
    bootstrap_servers: str
    admin_key: str
    read_key: str
    source_key: str
    screenshots: Path

    def screenshot_path(self, name: str) -> Path:
        return self.screenshots / f"{name}.png"


def send_events(console: Console, *events: dict[str, object]) -> None:
    """Publish events through ingest as the shop would."""
    answer = httpx.post(
        f"{console.ingest_url}/v1/events",
        json=list(events),
        headers={
            "Authorization": f"Bearer {console.source_key}",
            "Content-Type": "application/cloudevents-batch+json",
        },
        timeout=10,
    )
    assert answer.status_code == 202, answer.text


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from a test driving Playwright's sync API (which keeps
    an event loop of its own in this thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def call(
    console: Console, method: str, path: str, key: str, body: object = None, timeout: float = 30
) -> Any:
    """A service's API through the console's proxy (`/api/<service>/v1/...`), as the
    pages call it; the answer's JSON, after asserting it succeeded."""
    answer = httpx.request(
        method,
        f"{console.url}/api{path}",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )
    assert answer.is_success, f"{method} {path}: {answer.status_code} {answer.text}"
    return answer.json() if answer.content else None
