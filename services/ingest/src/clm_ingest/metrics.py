"""Ingest's own metrics; HTTP requests by route and status, consumer and dead-letter
counts come from clm_events.metrics under their shared names."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_ACCEPTED = Counter(
    "clm_ingest_events_accepted_total",
    "Events acknowledged by the broker, by type, the key's source and channel.",
    ["type", "source", "channel"],
)
EVENTS_REJECTED = Counter(
    "clm_ingest_events_rejected_total",
    "Events refused over HTTP (a Segment message refused is also dead-lettered), by type "
    "(unknown if it did not parse), the key's source and reason (invalid, unstorable_text, "
    "derived_type, too_large, forbidden_source, rate_limited, broker_unavailable).",
    ["type", "source", "reason"],
)
PUBLISH_SECONDS = Histogram(
    "clm_ingest_publish_duration_seconds",
    "Time from handing a request's events to the producer to the last broker ack.",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUEST_EVENTS = Histogram(
    "clm_ingest_request_events",
    "Events per HTTP request (batch size).",
    ["channel"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
EVENTS_DUPLICATE = Counter(
    "clm_ingest_events_duplicate_total",
    "Events received over HTTP again (a client retrying) and not published again.",
    ["channel"],
)
IDENTITY_LINKS = Counter(
    "clm_ingest_identity_links_total",
    "identity.linked events by outcome (linked, unchanged, refused) and, for refusals, the "
    "guard's reason (blocked_id, same_id, already_linked, has_linked_ids, customer_limit).",
    ["outcome", "reason"],
)
SUBJECTS_REWRITTEN = Counter(
    "clm_ingest_subjects_rewritten_total",
    "Events whose subject, a linked anonymous id, became the known customer's id.",
)
