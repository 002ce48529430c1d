"""The topic registry and the idempotent "ensure topics" step.

Topics are created explicitly with their partition counts before anything produces or
consumes: some brokers (the local Tansu among them) auto-create a topic with their own
default partition count on any metadata request that names it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

# Event-type prefix -> domain topic suffix.
DOMAINS = ("purchase", "billing", "support", "web")


@dataclass(frozen=True)
class Topics:
    """Every topic CLM uses, named with one configurable prefix."""

    prefix: str = "clm."
    partitions: int = 6

    @property
    def inbound(self) -> str:
        return f"{self.prefix}events.inbound"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}events.deadletter"

    @property
    def transitions(self) -> str:
        return f"{self.prefix}lifecycle.transitions"

    @property
    def scores(self) -> str:
        return f"{self.prefix}scores"

    @property
    def actions(self) -> str:
        return f"{self.prefix}actions"

    @property
    def models(self) -> str:
        """The served score model, one event per version (one partition: in order)."""
        return f"{self.prefix}models"

    @property
    def privacy(self) -> str:
        """Erasure requests and each service's completions, keyed by customer id."""
        return f"{self.prefix}privacy"

    def domain(self, event_type: str) -> str:
        """Domain topic of a v1 event type: `purchase.completed` -> `clm.events.purchase`."""
        domain = event_type.split(".", 1)[0]
        if domain == "identity":  # links travel with the web activity they join
            domain = "web"
        if domain not in DOMAINS:
            raise ValueError(f"event type {event_type!r} has no domain topic")
        return f"{self.prefix}events.{domain}"

    @property
    def domains(self) -> list[str]:
        return [f"{self.prefix}events.{d}" for d in DOMAINS]

    def all(self) -> dict[str, int]:
        """Topic name -> partition count."""
        names = [
            self.inbound,
            *self.domains,
            self.deadletter,
            self.transitions,
            self.scores,
            self.actions,
            self.privacy,
        ]
        return {**dict.fromkeys(names, self.partitions), self.models: 1}


async def ensure_topics(
    bootstrap_servers: str, topics: dict[str, int], *, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Safe to run from every service at start-up and concurrently: a topic another process
    created in the meantime counts as present. An existing topic with another partition
    count is left alone and logged (repartitioning changes key -> partition placement).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        created: list[str] = []
        for name, partitions in missing.items():
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            name, num_partitions=partitions, replication_factor=replication_factor
                        )
                    ]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        present = [n for n in topics if n in existing]
        if present:
            described = await admin.describe_topics(present)
            for topic in described:
                want, have = topics[topic["topic"]], len(topic["partitions"])
                if want != have:
                    log.warning(
                        "topic has a different partition count",
                        extra={"topic": topic["topic"], "want": want, "have": have},
                    )
        if created:
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        await admin.close()
