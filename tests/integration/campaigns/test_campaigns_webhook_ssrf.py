"""A webhook host name is checked where it is resolved for the connection, so a name that
resolves to an internal address at send time is refused, whatever it resolved to when
the trigger was saved (DNS rebinding)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from campaignkit import WebhookReceiver

from clm_campaigns.channels import CheckedResolver, SsrfRefused, WebhookSender
from clm_campaigns.config import Settings
from clm_campaigns.domain.network import parse_networks

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_a_host_name_that_resolves_to_loopback_is_refused_when_sending() -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    url = f"http://localhost:{port}/hook"  # a name, not an address: aiohttp resolves it
    send: dict[str, Any] = {"action_id": "act_1", "target": {"url": url}, "payload": "{}"}
    guarded = WebhookSender(Settings())
    allowing = WebhookSender(Settings(webhook_allowed_networks=["127.0.0.0/8", "::1/128"]))
    try:
        refused = await guarded.send(**send, secret=SECRET)
        assert not refused.ok and not refused.retryable
        assert "refused" in (refused.error or "") and "loopback" in (refused.error or "")
        assert receiver.received == []
        delivered = await allowing.send(**send, secret=SECRET)
        assert delivered.ok and len(receiver.received) == 1
    finally:
        await guarded.close()
        await allowing.close()
        await receiver.stop()


class _Rebinding(AbstractResolver):
    """A name server whose answer for a name changes after the first lookup."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers.pop(0)
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


async def test_a_name_rebound_to_an_internal_address_is_refused_on_the_next_lookup() -> None:
    resolver = CheckedResolver(parse_networks([]), _Rebinding(["93.184.215.14", "10.0.0.7"]))
    assert (await resolver.resolve("hooks.example.com", 443))[0]["host"] == "93.184.215.14"
    with pytest.raises(SsrfRefused, match=r"hooks\.example\.com refused: .*private"):
        await resolver.resolve("hooks.example.com", 443)
