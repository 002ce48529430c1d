"""What every CLM service process is made of: a runtime (database, producer, consumers,
outbox relay) and a FastAPI app with /healthz, /readyz and /metrics around it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field
from pydantic_settings import BaseSettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from clm_events import db, metrics
from clm_events.auth import KeyStore
from clm_events.consumer import ConsumerRunner, Handler
from clm_events.logs import configure_logging
from clm_events.migrations import revisions, schema_revision
from clm_events.outbox import OutboxRelay
from clm_events.privacy import Erase, Tombstones, erasure_handler
from clm_events.producer import Producer
from clm_events.settings import DEVELOPMENT_HASH_KEY, ClmSettings
from clm_events.topics import Topics, ensure_topics

log = logging.getLogger(__name__)


class ServiceSettings(BaseSettings):
    """Base of each service's settings; a subclass sets its own env prefix and port."""

    host: str = "127.0.0.1"
    port: int = 8000
    consumer_max_records: int = Field(500, ge=1)
    consumer_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        description="Kafka group session timeout: how soon a dead member's "
        "partitions move (some brokers also hold a join for about half of it).",
    )
    consumer_heartbeat_interval_ms: int = Field(3_000, ge=100)
    consumer_fetch_max_wait_ms: int = Field(
        500,
        ge=1,
        le=5_000,
        description="Longest a fetch waits at the broker for new messages. Kafka answers "
        "as soon as data arrives, so there it only sets how often an idle consumer asks "
        "again; a broker that holds fetches (the local one) adds part of it to every hop.",
    )
    outbox_poll_interval: float = Field(0.5, gt=0)
    startup_timeout: float = Field(60.0, gt=0, description="How long to wait for DB and broker.")
    common: ClmSettings = Field(default_factory=ClmSettings)


class Runtime:
    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        *,
        outbox: sa.Table | None = None,
        processed: sa.Table | None = None,
        migrations: Path | None = None,
        schema: str | None = None,
        tombstones: sa.Table | None = None,
    ) -> None:
        common = settings.common
        # The service's schema must be at its migrations' head (or past it: a newer
        # release's revision) before anything reads or writes it: in a rolling update new
        # pods can start before the migrations Job has finished.
        self._schema = schema
        self._revisions = revisions(migrations) if migrations is not None else None
        self._behind: str | None = None
        self._waiting: asyncio.Task[None] | None = None
        self.name = name
        self.settings = settings
        self.topics = Topics(common.topic_prefix, common.topic_partitions)
        self.engine = db.create_engine(common.database_url, application_name=name)
        self.sessions = db.session_factory(self.engine)
        self.producer = Producer(
            common.kafka_bootstrap_servers,
            client_id=name,
            idempotent=common.kafka_idempotent_producer,
        )
        self.processed = processed
        self.outbox = outbox
        self.tombstones = Tombstones.of(tombstones, common) if tombstones is not None else None
        self.relay = (
            OutboxRelay(
                sessions=self.sessions,
                table=outbox,
                producer=self.producer,
                service=name,
                poll_interval=settings.outbox_poll_interval,
            )
            if outbox is not None
            else None
        )
        self.keys = KeyStore(self.sessions)
        self.consumers: list[ConsumerRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started: set[str] = set()  # group ids of consumers whose client has started
        self._background: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []

    @classmethod
    def of(cls, name: str, settings: ServiceSettings, models: ModuleType) -> Runtime:
        """The runtime of a service whose `models` module defines its SCHEMA, outbox and
        processed_events, with its migration scripts in a `migrations` folder beside it."""
        return cls(
            name,
            settings,
            outbox=models.outbox,
            processed=models.processed_events,
            migrations=Path(models.__file__ or "").parent / "migrations",
            schema=models.SCHEMA,
            tombstones=getattr(models, "privacy_tombstones", None),
        )

    def add_consumer(
        self, *, group_id: str, topics: Sequence[str], handler: Handler, **options: Any
    ) -> ConsumerRunner:
        if self.processed is None:
            raise ValueError("a consumer needs the service's processed-events table")
        runner = ConsumerRunner(
            group_id=group_id,
            topics=topics,
            bootstrap_servers=self.settings.common.kafka_bootstrap_servers,
            sessions=self.sessions,
            processed_table=self.processed,
            handler=handler,
            producer=self.producer,
            deadletter_topic=self.topics.deadletter,
            max_records=self.settings.consumer_max_records,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=self.settings.consumer_heartbeat_interval_ms,
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            on_committed=self.relay.wake if self.relay else None,
            tombstones=self.tombstones,
            **options,
        )
        self.consumers.append(runner)
        return runner

    def add_erasure(self, *, group_id: str, erase: Erase) -> ConsumerRunner:
        """Consume `clm.privacy` in a group of its own and carry out each erasure request
        with `erase` (this service's rows), reporting completion through the outbox."""
        if self.tombstones is None or self.outbox is None:
            raise ValueError("erasure needs the service's tombstones and outbox tables")
        handler = erasure_handler(
            service=self.name,
            tombstones=self.tombstones,
            outbox=self.outbox,
            topic=self.topics.privacy,
            erase=erase,
        )
        return self.add_consumer(group_id=group_id, topics=[self.topics.privacy], handler=handler)

    def add_background(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A loop (timer sweep, dispatcher, scheduled refit) started and cancelled with the
        service; /readyz reports it if it ever stops."""
        self._background.append((name, loop))

    async def start(self) -> None:
        common = self.settings.common
        # Wait for dependencies instead of crash-looping while they start next to us.
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self.settings.startup_timeout),
            wait=wait_exponential(max=5),
            reraise=True,
        ):
            with attempt:
                await db.ping(self.engine)
                await ensure_topics(
                    common.kafka_bootstrap_servers,
                    self.topics.all(),
                    replication_factor=common.topic_replication_factor,
                )
        await self.producer.start()
        if common.privacy_hash_key.get_secret_value() == DEVELOPMENT_HASH_KEY:
            log.warning(
                "CLM_PRIVACY_HASH_KEY is not set: erased ids are hashed with the public "
                "development key; set a secret one in production"
            )
        self._behind = await self._schema_behind()
        if self._behind is None:
            self._launch()
        else:
            log.warning(
                "schema not migrated for this release yet; consumers and loops wait for it",
                extra={"schema": self._schema, "state": self._behind},
            )
            self._waiting = asyncio.create_task(self._launch_when_migrated(), name="schema")

    def _launch(self) -> None:
        for c in self.consumers:
            # Joining a group can take seconds; the API serves meanwhile and /readyz tells.
            self._tasks.append(asyncio.create_task(self._consume(c), name=f"consumer:{c.group_id}"))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        for name, loop in self._background:
            self._tasks.append(asyncio.create_task(loop(), name=name))

    async def _schema_behind(self) -> str | None:
        """None when the schema is ready for this code, else what it is at."""
        if self._revisions is None or self._schema is None:
            return None
        head, known = self._revisions
        at = await schema_revision(self.engine, self._schema)
        if at == head or (at is not None and at not in known):
            return None
        return f"behind: at {at or 'no revision'}, this release needs {head}"

    async def _launch_when_migrated(self, every: float = 2.0) -> None:
        while self._behind is not None:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):  # the database may be restarting
                self._behind = await self._schema_behind()
        log.info("schema migrated; starting consumers and loops", extra={"schema": self._schema})
        self._launch()

    async def _consume(self, consumer: ConsumerRunner) -> None:
        await consumer.start()
        self._started.add(consumer.group_id)
        try:
            await consumer.run()
        finally:
            await consumer.stop()  # idempotent; covers a stop() that raced the join

    async def stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            await asyncio.gather(self._waiting, return_exceptions=True)
        for task in self._tasks:
            # Stopped while its client was still starting, a consumer would wait in that
            # start for ever: cancelled instead.
            group = task.get_name().removeprefix("consumer:")
            if task.get_name().startswith("consumer:") and group not in self._started:
                task.cancel()
        for c in self.consumers:
            await c.stop()
        if self.relay is not None:
            self.relay.stop()
        for task in self._tasks:
            if task.get_name() in {name for name, _ in self._background}:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.producer.stop()
        await self.engine.dispose()

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        for name, probe in (("database", db.ping(self.engine)), ("broker", self.producer.ping())):
            try:
                await asyncio.wait_for(probe, timeout=2.0)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"unavailable: {type(exc).__name__}"
        if self._behind is not None:
            checks["schema"] = self._behind
        for task in self._tasks:
            if task.done():
                checks[task.get_name()] = "stopped"
        return checks


class RefuseNul:
    """422 for a NUL character in the path or query: PostgreSQL text cannot hold U+0000,
    so a query with one failed with a 500 deep in the driver instead of a clear answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            if b"%00" in raw or b"\x00" in raw or b"%00" in scope.get("query_string", b""):
                detail = [
                    {"loc": ["query"], "msg": "NUL characters are not allowed", "type": "nul"}
                ]
                await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(runtime: Runtime, *, title: str, routers: Sequence[APIRouter] = ()) -> FastAPI:
    common = runtime.settings.common
    configure_logging(service=runtime.name, level=common.log_level, json=common.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        # What imports and startup built lives as long as the process. Frozen, the cyclic
        # collector's full passes skip it: unfrozen, each pass walked it in about 0.1 s,
        # every second or so under load (profiled: over 10% of a busy service's CPU).
        gc.collect()
        gc.freeze()
        log.info("started", extra={"port": runtime.settings.port})
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.keys = runtime.keys
    app.add_middleware(RefuseNul)
    app.add_middleware(HttpMetrics, service=runtime.name)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Alive: the process serves requests."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Ready: the database and the broker answer and every background loop runs."""
        checks = await runtime.readiness()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app


class HttpMetrics:
    """Requests and latency by route template (not raw path: ids would explode cardinality)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(self.service, method, route, str(status)).inc()
            metrics.HTTP_SECONDS.labels(self.service, method, route).observe(
                time.perf_counter() - started
            )
