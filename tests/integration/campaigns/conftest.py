"""Fixtures of the campaigns integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from campaignkit import WebhookReceiver
from kit import make_key
from sqlalchemy.ext.asyncio import AsyncEngine

from clm_devstack.procs import free_port


@pytest.fixture(autouse=True)
async def isolated_campaigns(migrated: str, engine: AsyncEngine) -> None:
    """Tests share the campaigns schema: earlier tests' triggers must not fire and their
    unsent actions must not be dispatched to receivers that are gone."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE campaigns.triggers SET enabled = false"))
        await conn.execute(
            sa.text(
                "UPDATE campaigns.actions SET status = 'failed', last_error = 'test isolation' "
                "WHERE status IN ('pending', 'sending')"
            )
        )


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    await r.start()
    yield r
    await r.stop()


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
