"""Child-process helpers shared by the local servers (Postgres, Tansu) and the launcher.

Every server we start must die with the Python process that started it, even when that
process is SIGKILLed: children get a parent-death signal (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_IS_LINUX = sys.platform.startswith("linux")
# setpriv (util-linux) sets the parent-death signal *after* switching uid, and avoids
# preexec_fn, which can deadlock in the forked child when the parent has threads
# (asyncio's resolver pool, aiokafka, ...).
_SETPRIV = shutil.which("setpriv") if _IS_LINUX else None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_offset(size: int, base: int = 8001) -> int:
    """An offset such that ports base+offset .. base+offset+size-1 are all free now (for
    `clm-dev run --port-offset`, which moves the services' fixed ports together)."""
    while True:
        # Below Linux's ephemeral range (32768-60999): a port there can be taken between
        # this check and the bind by any process's outgoing connection or bind(0).
        offset = random.randrange(10_000, 32_768 - base - size)
        try:
            for port in range(base + offset, base + offset + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return offset
        except OSError:
            continue


def wait_for_port(
    host: str, port: int, timeout: float, *, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``host:port`` accepts TCP connections.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError at once if ``proc`` (the
    server that should be listening) exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with code {proc.returncode} "
                f"before listening on {host}:{port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s")
        time.sleep(0.05)


def _pdeathsig_preexec(sig: signal.Signals) -> Callable[[], None]:
    """Fallback when setpriv is missing: set the parent-death signal in the forked child.

    subprocess runs preexec_fn after its setuid/setgid, so the kernel keeps the signal.
    """
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl: nobody will signal us
            os.kill(os.getpid(), sig)

    return preexec


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    user: str | None = None,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    pdeathsig: signal.Signals = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that dies with us.

    - Own session/process group: a terminal Ctrl-C reaches only the launcher, which then
      stops the children in order.
    - ``pdeathsig`` is delivered to the child when the *thread* that called spawn() exits
      (Linux semantics), so call this from a long-lived thread (normally the main one).
    - ``user``: run as that OS user (needs root); the parent-death signal is set after the
      uid switch because the kernel clears it on credential changes.
    - stdout and stderr go to ``log_path`` (appended) or are discarded.
    """
    args = [os.fspath(a) for a in argv]
    preexec: Callable[[], None] | None = None
    uid = gid = None
    if user is not None:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if _SETPRIV is not None:
        prefix = [_SETPRIV, "--pdeathsig", pdeathsig.name]
        if uid is not None:
            prefix += ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
        args = [*prefix, "--", *args]
        uid = gid = None  # setpriv switches user itself
    elif _IS_LINUX:
        preexec = _pdeathsig_preexec(pdeathsig)

    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # closed below: the child keeps its own copy
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=[] if gid is not None else None,
            preexec_fn=preexec,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    logger.debug("spawned pid %d: %s", proc.pid, " ".join(args))
    return proc


def stop(
    proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
) -> int:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored %s for %.1fs; killing it", proc.pid, sig.name, timeout)
            proc.kill()
            proc.wait()
    return proc.returncode


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an unreaped orphan counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not _IS_LINUX  # no procfs: trust kill(0); on Linux it just vanished
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pid(pid: int, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Like stop(), for a process that is not our child (e.g. an orphan from a killed run)."""
    for s, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, s)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
        logger.warning("pid %d survived %s for %.1fs", pid, s.name, wait)
    raise RuntimeError(f"could not stop pid {pid}")


class ChildServer:
    """A server run as our direct child: what Postgres and the broker have in common."""

    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
