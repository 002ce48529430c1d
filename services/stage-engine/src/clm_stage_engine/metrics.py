"""Stage-engine metrics (the consumer, outbox and HTTP ones come from clm_events)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "clm_stage_events_total", "Events applied to customer timelines, by type.", ["type"]
)
TRANSITIONS = Counter(
    "clm_stage_transitions_total",
    "Stage transitions published, by from/to stage and cause (event, time, model_change).",
    ["from_stage", "to_stage", "cause"],
)
RETRACTED = Counter(
    "clm_stage_transitions_retracted_total",
    "Transitions dropped from the history because a late event rewrote the customer's past.",
)
RULE_ERRORS = Counter(
    "clm_stage_rule_errors_total",
    "Rule evaluations that failed on a customer's facts (counted as not matching).",
    ["rule"],
)
CUSTOMERS = Gauge("clm_stage_customers", "Customers per lifecycle stage.", ["stage"])
TIMER_BACKLOG = Gauge(
    "clm_stage_timer_backlog_customers", "Customers whose timer is due and not yet evaluated."
)
TIMER_LAG = Gauge("clm_stage_timer_lag_seconds", "How long the oldest due timer has been waiting.")
BATCH_SECONDS = Histogram(
    "clm_stage_batch_seconds",
    "Time to apply one batch inside its transaction, by kind (events, timer, model_change).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MERGES = Counter(
    "clm_stage_identity_merges_total",
    "identity.linked events applied, by outcome: merged (state held under the anonymous id "
    "moved to the customer), linked (nothing held yet; later events follow the link), "
    "refused (the anonymous id is linked to another customer already).",
    ["outcome"],
)
