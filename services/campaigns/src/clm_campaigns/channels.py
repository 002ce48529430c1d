"""Senders: one delivery attempt over a webhook or SMTP. They never raise for a failed
delivery; they say whether it may be retried."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks import Webhook

from clm_campaigns import metrics
from clm_campaigns.config import Settings
from clm_campaigns.domain.network import Network, parse_networks, refusal
from clm_campaigns.domain.triggers import literal_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None
    retryable: bool = True


class SsrfRefused(ValueError):
    @classmethod
    def of(cls, host: str, reason: str) -> SsrfRefused:
        return cls(
            f"webhook target {host} refused: {reason} (allow it with "
            "CLM_CAMPAIGNS_WEBHOOK_ALLOWED_NETWORKS)"
        )


async def check_target(url: str, allowed: list[Network]) -> None:
    """Resolve the URL's host and refuse it if any address is loopback, private,
    link-local (or otherwise not public) and not explicitly allowed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            raise SsrfRefused.of(host, reason)


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, refusing addresses the SSRF rules forbid. The addresses a
    connection is opened to are the ones checked, so a host name that resolves to a public
    address when a trigger is saved and to an internal one when it is sent (DNS
    rebinding) is still refused. (aiohttp does not resolve IP literals: see _check.)"""

    def __init__(self, allowed: list[Network], inner: AbstractResolver | None = None) -> None:
        self._allowed = allowed
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for info in found:
            reason = refusal(ipaddress.ip_address(info["host"].split("%", 1)[0]), self._allowed)
            if reason is not None:
                raise SsrfRefused.of(host, reason)
        return found

    async def close(self) -> None:
        await self._inner.close()


class WebhookSender:
    """Webhook POSTs over a pooled aiohttp client.

    aiohttp rather than httpx (the project's default client): on a loopback receiver with
    16 requests in flight httpx reached ~300 requests/s per process and aiohttp ~2,800;
    the dispatcher's throughput is bounded by this client.
    """

    def __init__(self, settings: Settings) -> None:
        self._allowed = parse_networks(settings.webhook_allowed_networks)
        self._timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
        self._connections = settings.dispatch_concurrency
        self._client: aiohttp.ClientSession | None = None  # needs a running loop
        self._passed: set[str] = set()  # URLs naming an address that check_target allowed
        self._seconds: dict[bool, Any] = {}  # DELIVERY_SECONDS children, by outcome.ok

    @property
    def allowed(self) -> list[Network]:
        return self._allowed

    async def send(
        self, *, action_id: str, target: dict[str, Any], payload: str, secret: str | None
    ) -> Outcome:
        started = time.perf_counter()
        outcome = await self._send(action_id, target, payload, secret)
        histogram = self._seconds.get(outcome.ok)
        if histogram is None:  # a labels() lookup per send cost as much as the observation
            histogram = self._seconds[outcome.ok] = metrics.DELIVERY_SECONDS.labels(
                "webhook", "ok" if outcome.ok else "error"
            )
        histogram.observe(time.perf_counter() - started)
        return outcome

    async def _check(self, url: str) -> None:
        """check_target, once per URL that names an IP address (its answer cannot change,
        and aiohttp connects to a literal without resolving it). A host name is checked
        where it is resolved for the connection, by CheckedResolver."""
        if url in self._passed or literal_address(url) is None:
            return
        await check_target(url, self._allowed)
        if len(self._passed) >= 1024:  # URLs come from triggers: few, but bounded
            self._passed.clear()
        self._passed.add(url)

    async def _send(
        self, action_id: str, target: dict[str, Any], payload: str, secret: str | None
    ) -> Outcome:
        url = str(target["url"])
        try:
            await self._check(url)
        except SsrfRefused as exc:
            return Outcome(False, str(exc), retryable=False)
        except OSError as exc:  # DNS failure: may be temporary
            return Outcome(False, f"cannot resolve webhook host: {exc}")
        if not secret:
            return Outcome(False, "the trigger has no webhook secret", retryable=False)
        now = datetime.now(UTC)
        headers = {
            **target.get("headers", {}),
            "content-type": str(target.get("content_type", "application/json")),
            # Standard Webhooks: the id is the action id, the receiver's idempotency key.
            "webhook-id": action_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": _signer(secret).sign(action_id, now, payload),
        }
        try:
            # No redirects: a public URL must not bounce us to an internal one.
            async with self._session().post(
                url, data=payload.encode(), headers=headers, allow_redirects=False
            ) as response:
                await response.read()  # a fully read response keeps its connection pooled
                status = response.status
        except SsrfRefused as exc:  # the host name resolved to a refused address
            return Outcome(False, str(exc), retryable=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Outcome(True)
        return Outcome(False, f"HTTP {status}")

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections, resolver=CheckedResolver(self._allowed)
                ),
                timeout=self._timeout,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    """Decoding the secret is a fair share of signing; triggers are few, so cache it."""
    return Webhook(secret)


class EmailSender:
    def __init__(self, settings: Settings) -> None:
        self._s = settings

    async def send(self, *, action_id: str, target: dict[str, Any], payload: str) -> Outcome:
        started = time.perf_counter()
        outcome = await self._send(action_id, target, payload)
        metrics.DELIVERY_SECONDS.labels("email", "ok" if outcome.ok else "error").observe(
            time.perf_counter() - started
        )
        return outcome

    async def _send(self, action_id: str, target: dict[str, Any], payload: str) -> Outcome:
        to, subject = str(target.get("to", "")), str(target.get("subject", ""))
        if "@" not in to or any(c in to + subject for c in "\r\n"):
            return Outcome(False, f"invalid recipient or subject for action {action_id}", False)
        s = self._s
        message = EmailMessage()
        message["From"] = s.email_from
        message["To"] = to
        message["Subject"] = subject
        # Lets a mail pipeline drop a re-sent copy after a crash.
        message["Message-ID"] = f"<{action_id}@clm.campaigns>"
        message["X-CLM-Action-Id"] = action_id
        message.set_content(payload)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password,
                start_tls=s.smtp_start_tls,
                use_tls=s.smtp_use_tls,
                timeout=s.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return Outcome(False, f"recipient refused: {exc}"[:500], retryable=False)
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx is permanent (RFC 5321); 4xx is worth another try.
            return Outcome(False, f"SMTP {exc.code}: {exc.message}"[:500], exc.code < 500)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
        return Outcome(True)
