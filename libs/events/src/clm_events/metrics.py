"""Prometheus metrics every service exports with the same names and labels.

Module-level so that several runners in one process share one registry entry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double every counter's output and no alert or panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONSUMER_LAG = Gauge(
    "clm_consumer_lag_messages",
    "Messages behind the partition's high-water mark (as reported by the last fetch).",
    ["group", "topic", "partition"],
)
CONSUMER_BATCH_SIZE = Histogram(
    "clm_consumer_batch_size_messages",
    "Messages per consumed batch (one database transaction each).",
    ["group"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
CONSUMER_BATCH_SECONDS = Histogram(
    "clm_consumer_batch_duration_seconds",
    "Time from fetching a batch to committing its offsets.",
    ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENT_LATENCY = Histogram(
    "clm_event_processing_latency_seconds",
    "Event time to the moment its effects were durable (late events land in the top bucket).",
    ["group", "topic"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
CONSUMER_MESSAGES = Counter(
    "clm_consumer_messages_total",
    "Consumed messages by outcome: applied, duplicate, deadlettered.",
    ["group", "topic", "outcome"],
)
DEADLETTERED = Counter(
    "clm_deadletter_messages_total",
    "Messages sent to the dead-letter topic, by source topic and reason kind.",
    ["group", "topic", "reason"],
)
CONSUMER_RETRIES = Counter(
    "clm_consumer_retries_total",
    "Batches retried after a transient database or broker failure.",
    ["group"],
)
OUTBOX_BACKLOG = Gauge("clm_outbox_backlog_messages", "Outbox rows not yet published.", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "clm_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.", ["service"]
)
OUTBOX_PUBLISHED = Counter(
    "clm_outbox_published_total", "Outbox rows published to Kafka.", ["service", "topic"]
)
HTTP_REQUESTS = Counter(
    "clm_http_requests_total",
    "HTTP requests by route and status.",
    ["service", "method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "clm_http_request_duration_seconds",
    "HTTP request duration by route.",
    ["service", "method", "route"],
)


def forget_partition(group: str, topic: str, partition: int) -> None:
    """Drop a revoked partition's lag series so a moved partition is not reported twice."""
    try:
        CONSUMER_LAG.remove(group, topic, str(partition))
    except KeyError:
        pass
