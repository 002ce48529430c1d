"""A service told to stop (SIGTERM) just after it started, while its consumers are still
joining their groups, stops promptly: it used to wait for ever in the Kafka client's
start, until the orchestrator killed it."""

from __future__ import annotations

import asyncio
import os
import uuid

from kit import ServiceProcess

from clm_devstack.procs import free_port


async def test_a_stop_while_the_consumers_join_ends_promptly(
    migrated: str, bootstrap_servers: str
) -> None:
    # One group, as a restarted replica rejoins it: a stop soon after readiness falls into
    # the join (a second or so, longer while the group rebalances); stops at several
    # points of it.
    group, prefix = f"g-stop-{uuid.uuid4().hex[:6]}", f"stop{uuid.uuid4().hex[:6]}."
    for delay in (0.2, 0.6, 1.0):
        port = free_port("127.0.0.1")
        service = ServiceProcess(
            "campaigns",
            {
                **os.environ,
                "CLM_DATABASE_URL": migrated,
                "CLM_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
                "CLM_TOPIC_PREFIX": prefix,
                "CLM_TOPIC_PARTITIONS": "2",
                "CLM_CAMPAIGNS_PORT": str(port),
                "CLM_CAMPAIGNS_GROUP_ID": group,
                "CLM_LOG_LEVEL": "WARNING",
            },
        )
        await service.start()
        await asyncio.sleep(delay)
        await service.stop()  # fails if the process is still there 20 s after SIGTERM
