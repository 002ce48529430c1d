"""The local CLM stack: embedded PostgreSQL, the Tansu broker, topics, migrations, the four
services and the console, started and stopped in order. Used by `make run` and by system
tests."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from clm_devstack import procs
from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.tansu import TansuBroker
from clm_events.migrations import migrate, migrate_auth
from clm_events.settings import ClmSettings
from clm_events.topics import Topics, ensure_topics

log = logging.getLogger(__name__)

# Alembic's `op` and `context` are process-wide: two stacks preparing at once (in two
# threads) must take turns.
_MIGRATING = threading.Lock()


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# The services on the event path.
BACKENDS = (
    ServiceSpec("ingest", "clm_ingest", 8001),
    ServiceSpec("stage-engine", "clm_stage_engine", 8002),
    ServiceSpec("scoring", "clm_scoring", 8003),
    ServiceSpec("campaigns", "clm_campaigns", 8004),
)
CONSOLE = ServiceSpec("console", "clm_console", 8005)
SERVICES = (*BACKENDS, CONSOLE)


@dataclass
class Stack:
    data_dir: Path
    pg_port: int = 54329
    kafka_port: int = 19092
    services: tuple[ServiceSpec, ...] = SERVICES
    database_url: str | None = None  # external server instead of the embedded one
    bootstrap_servers: str | None = None  # external broker instead of Tansu
    postgres: EmbeddedPostgres | None = None
    broker: TansuBroker | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Settings for the services on top of the caller's environment (e.g. a shorter
    # consumer session timeout in system tests).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start_infrastructure(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.database_url is None:
            self.postgres = EmbeddedPostgres(
                self.data_dir / "pgdata", port=self.pg_port, log_path=self.log_dir / "postgres.log"
            )
            self.postgres.start()
            self.database_url = self.postgres.url()
        if self.bootstrap_servers is None:
            self.broker = TansuBroker(port=self.kafka_port, log_path=self.log_dir / "tansu.log")
            self.broker.start()
            self.bootstrap_servers = self.broker.bootstrap_servers

    def env(self) -> dict[str, str]:
        assert self.database_url and self.bootstrap_servers
        return {
            **os.environ,
            "CLM_DATABASE_URL": self.database_url,
            "CLM_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            **self.extra_env,
        }

    def prepare(self) -> None:
        """Topics first (before any client's metadata request can auto-create them with the
        broker's default partition count), then every service's migrations, in-process:
        one interpreter start instead of four."""
        assert self.database_url and self.bootstrap_servers
        common = ClmSettings(
            database_url=self.database_url, kafka_bootstrap_servers=self.bootstrap_servers
        )
        topics = Topics(common.topic_prefix, common.topic_partitions)
        asyncio.run(
            ensure_topics(
                common.kafka_bootstrap_servers,
                topics.all(),
                replication_factor=common.topic_replication_factor,
            )
        )
        with _MIGRATING:
            migrate_auth(self.database_url)
            for spec in self.services:
                if importlib.util.find_spec(f"{spec.package}.models") is None:
                    continue  # a service without tables of its own (the console)
                package = importlib.import_module(spec.package)
                models = importlib.import_module(f"{spec.package}.models")
                migrate(
                    Path(package.__file__ or "").parent / "migrations",
                    url=self.database_url,
                    schema=models.SCHEMA,
                )

    def start_services(self, timeout: float = 30.0) -> None:
        for spec in self.services:
            self._spawn(spec)
        self.wait_healthy(self.services, timeout)

    def spec(self, name: str) -> ServiceSpec:
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def kill_service(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal one service (SIGKILL by default: a crash) and reap it."""
        proc = self.children.pop(name)
        procs.stop(proc, sig, timeout=15)
        log.info("%s (pid %d) stopped with %s", name, proc.pid, sig.name)

    def restart_service(self, name: str, timeout: float = 30.0, *, wait: bool = True) -> None:
        """Start a service that was killed, and wait until it answers /healthz (unless
        `wait` is false: then call `wait_healthy` later)."""
        if name in self.children and self.children[name].poll() is None:
            raise RuntimeError(f"{name} is still running")
        spec = self.spec(name)
        self._spawn(spec)
        if wait:
            self.wait_healthy([spec], timeout)

    def wait_healthy(self, specs: Iterable[ServiceSpec], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(specs)
        while pending:
            self.check_children()
            pending = [s for s in pending if not _healthy(s.url)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    "not healthy in time: "
                    + ", ".join(s.name for s in pending)
                    + f" (see {self.log_dir})"
                )
            if pending:
                time.sleep(0.2)

    def _spawn(self, spec: ServiceSpec) -> None:
        self.children[spec.name] = procs.spawn(
            [self._cli(spec), "serve"],
            env={
                **self.env(),
                f"CLM_{spec.package.removeprefix('clm_').upper()}_PORT": str(spec.port),
                # Where it finds the others (ports move with --port-offset): the console
                # for everything, ingest for privacy exports.
                **{
                    f"CLM_{_env_name(spec)}_{_env_name(s)}_URL": s.url
                    for s in self.services
                    if s is not spec
                },
            },
            log_path=self.log_dir / f"{spec.name}.log",
        )

    def check_children(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} "
                    f"(see {self.log_dir / (name + '.log')})"
                )

    def stop(self) -> None:
        """Services first (they flush and leave their consumer groups), then the broker,
        then the database. The services stop side by side: they all get SIGTERM first."""
        for proc in self.children.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(list(self.children.items())):
            procs.stop(proc, timeout=15)
            log.info("stopped %s", name)
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def _cli(self, spec: ServiceSpec) -> str:
        exe = Path(sys.executable).with_name(f"clm-{spec.name}")
        return str(exe) if exe.exists() else shutil.which(f"clm-{spec.name}") or str(exe)


def _env_name(spec: ServiceSpec) -> str:
    return spec.package.removeprefix("clm_").upper()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
