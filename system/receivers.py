"""Where actions land in system runs: a webhook receiver and an SMTP server, both local.

Both record every delivery with its arrival time, so a run can check payloads,
re-deliveries (same `webhook-id`) and latency.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from clm_devstack.procs import free_port


@dataclass
class Delivery:
    received: float  # time.time()
    webhook_id: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """`POST /hook` answers 204 and records the delivery. Runs on the caller's loop."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append(Delivery(time.time(), request.headers.get("webhook-id", ""), body))
        return web.Response(status=204)

    def by_id(self) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for d in self.deliveries:
            out.setdefault(d.webhook_id, []).append(d)
        return out


@dataclass
class Mail:
    received: float
    to: list[str]
    action_id: str
    subject: str
    body: str


class _Handler:
    def __init__(self, sink: list[Mail], lock: threading.Lock) -> None:
        self.sink, self.lock = sink, lock

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content)
        payload = msg.get_payload(decode=True) if not msg.is_multipart() else b""
        with self.lock:
            self.sink.append(
                Mail(
                    time.time(),
                    list(envelope.rcpt_tos),
                    msg.get("X-CLM-Action-Id", ""),
                    msg.get("Subject", ""),
                    (payload or b"").decode(errors="replace"),
                )
            )
        return "250 OK"


class SmtpServer:
    """A local SMTP server (aiosmtpd, its own thread) that keeps every message."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.mails: list[Mail] = []
        self._lock = threading.Lock()
        self._controller = Controller(
            _Handler(self.mails, self._lock), hostname=host, port=self.port
        )

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
