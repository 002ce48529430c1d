"""The local servers start on free ports, work for real clients, and never outlive us."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from clm_devstack.postgres import EmbeddedPostgres
from clm_devstack.procs import pid_alive
from clm_devstack.tansu import TansuBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics"),
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    with TansuBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


async def test_postgres_query_and_data_survive_restart(stack_dir: Path) -> None:
    pg = EmbeddedPostgres(stack_dir / "pgdata")
    try:
        pg.start()
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == "clm"
            await conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v int)")
            await conn.execute("INSERT INTO kv VALUES ('answer', 42)")
        finally:
            await conn.close()

        port = pg.port
        pg.stop()
        assert pg.pid is None
        pg.start()
        assert pg.port == port

        engine = create_async_engine(pg.url())
        try:
            async with engine.connect() as sa_conn:
                value = await sa_conn.scalar(text("SELECT v FROM kv WHERE k = 'answer'"))
        finally:
            await engine.dispose()
        assert value == 42
    finally:
        pg.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as another OS user")
async def test_postgres_starts_on_data_its_os_user_made_under_an_older_uid(
    stack_dir: Path,
) -> None:
    """The OS user can be recreated between runs (a concurrent useradd replaced it) and
    then has another uid: the data dir is handed to the current one, not refused."""
    pg = EmbeddedPostgres(stack_dir / "pgdata")
    pg.start()
    pg.stop()
    stale = 60_000 + os.getpid() % 1000  # a uid no user has
    for path in [pg.data_dir, *pg.data_dir.rglob("*")]:
        os.lchown(path, stale, stale)
    try:
        pg.start()
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        pg.stop()


async def test_tansu_round_trip(broker: TansuBroker) -> None:
    topic = "devstack.roundtrip"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1", headers=[("h", b"1")])
    finally:
        await producer.stop()

    # Manual assignment: a group join would cost seconds here (Tansu holds JoinGroup).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        batches = await consumer.getmany(timeout_ms=10_000, max_records=1)
    finally:
        await consumer.stop()
    records = [r for rs in batches.values() for r in rs]
    assert [(r.key, r.value, list(r.headers)) for r in records] == [
        (b"k1", b"hello", [("h", b"1")])
    ]


_LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from clm_devstack.postgres import EmbeddedPostgres
    from clm_devstack.tansu import TansuBroker

    pg = EmbeddedPostgres(Path(sys.argv[1]))
    pg.start()
    broker = TansuBroker()
    broker.start()
    print(pg.pid, broker.pid, flush=True)
    time.sleep(600)
    """
)


def test_servers_die_when_parent_is_sigkilled(stack_dir: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(stack_dir / "pgdata")],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert launcher.stdout is not None
        ready, _, _ = select.select([launcher.stdout], [], [], 20)
        assert ready, "launcher did not report its servers in time"
        pids = [int(p) for p in launcher.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)

        launcher.kill()
        launcher.wait()
        # pid_alive() counts zombies as gone: the orphans' new parent (init) reaps them.
        killed = time.monotonic()
        while any(pid_alive(p) for p in pids) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        alive = [p for p in pids if pid_alive(p)]
        assert not alive, f"orphans left running: {alive}"
        print(f"servers gone {time.monotonic() - killed:.2f}s after SIGKILL")

        # The data dir is usable again straight away (no lock left behind by the dead run).
        with EmbeddedPostgres(stack_dir / "pgdata") as pg:
            assert pg.pid is not None
    finally:
        launcher.kill()
        launcher.wait()
        for pid in pids:  # only if the test failed
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
