"""Prometheus metrics of the campaigns service (module-level: one registry entry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIONS = Counter(
    "clm_campaigns_actions_total",
    "Actions by trigger, channel and status (pending when recorded; delivered, failed, "
    "suppressed, held_out when final).",
    ["trigger", "channel", "status"],
)
SUPPRESSIONS = Counter(
    "clm_campaigns_suppressions_total",
    "Trigger matches not sent, by reason (cooldown, frequency_cap, global_cap, holdout).",
    ["reason"],
)
DEFERRALS = Counter(
    "clm_campaigns_deferrals_total",
    "Actions held for later, by reason (delay, quiet_hours).",
    ["reason"],
)
DELIVERY_SECONDS = Histogram(
    "clm_campaigns_delivery_duration_seconds",
    "Time one delivery attempt took (webhook request, SMTP send), by channel and outcome.",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSITION_TO_DELIVERY = Histogram(
    "clm_campaigns_transition_to_delivery_seconds",
    "From the causing event's time to the action's delivery, by channel.",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
BACKLOG = Gauge(
    "clm_campaigns_dispatch_backlog_actions",
    "Actions due now and not yet delivered (pending or being sent).",
)
BACKLOG_AGE = Gauge(
    "clm_campaigns_dispatch_oldest_due_seconds",
    "How long the oldest due action has been waiting.",
)
RETRIES = Counter(
    "clm_campaigns_delivery_retries_total",
    "Delivery attempts that failed and were scheduled again, by channel.",
    ["channel"],
)
IDENTITY_MERGES = Counter(
    "clm_campaigns_identity_merges_total",
    "Anonymous ids merged into a known customer (lifecycle.customers_merged applied).",
)
SEGMENT_CHANGES = Counter(
    "clm_campaigns_segment_changes_total",
    "Customers who entered or left a segment on the live path (consumed batches).",
    ["change"],
)
JOURNEY_STEPS = Counter(
    "clm_campaigns_journey_steps_total",
    "Journey steps run, by journey and outcome (sent, waited, event, timeout, then, else, "
    "arm, exit, or the reason a send step was suppressed).",
    ["journey", "outcome"],
)
JOURNEY_RUNS = Counter(
    "clm_campaigns_journey_runs_total",
    "Journey runs started and finished, by journey and how (entered, completed, exited).",
    ["journey", "how"],
)
JOURNEY_LATENESS = Histogram(
    "clm_campaigns_journey_step_lateness_seconds",
    "How long after its due time a waiting run's step ran (a downtime shows here).",
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 6 * 3600, 86_400),
)
