"""Fixtures of the campaigns integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from campaignkit import isolate, receiver
from kit import make_key
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_devstack.procs import free_port

__all__ = ["receiver"]  # the shared fixture


@pytest.fixture(autouse=True)
async def isolated_campaigns(migrated: str, engine: AsyncEngine) -> None:
    await isolate(engine)


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port."""
    box = Mailbox()
    port = free_port("127.0.0.1")
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
async def admin_key(migrated: str) -> str:
    return await make_key(migrated, "admin")


@pytest.fixture
async def read_key(migrated: str) -> str:
    return await make_key(migrated, "read")
