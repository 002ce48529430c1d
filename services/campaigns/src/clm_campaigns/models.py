"""Tables of the campaigns service, all in its own schema."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from clm_events.db import outbox_table, processed_events_table
from clm_events.privacy import tombstones_table

SCHEMA = "campaigns"
metadata = sa.MetaData(schema=SCHEMA)
outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
# Keyed hashes of erased ids: their later events are dropped (clm_events.privacy).
privacy_tombstones = tombstones_table(metadata)

_now = sa.func.now()

# The current definition of each trigger; every change is also kept in trigger_versions.
triggers = sa.Table(
    "triggers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("definition", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_by", sa.Text, nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)

trigger_versions = sa.Table(
    "trigger_versions",
    metadata,
    sa.Column("trigger_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("change", sa.Text, nullable=False),  # created, updated, enabled, disabled, deleted
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("definition", JSONB, nullable=False),
    sa.Column("changed_by", sa.Text, nullable=False),  # API key id
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

# What campaigns knows about each customer, kept from the topics, to personalise actions
# without calling other services.
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text),
    sa.Column("stage_at", sa.DateTime(timezone=True)),
    sa.Column("traits", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("facts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("scores", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("scores_at", sa.DateTime(timezone=True)),
    sa.Column("recent_purchases", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("stage_transition", sa.Text),  # the transition that set `stage`
    sa.Column("stage_entry", sa.Integer),  # ... and which entry into the stage it was
    # The customer's memberships, segment id -> version (segment_members, kept with it):
    # read with the customer, so a batch knows who it moves without reading them back.
    # An entry of another version than the segment's current one is no membership.
    sa.Column("segments", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    # The console's search by email; the members lists filtered by stage and RFM segment.
    sa.Index("customers_email", sa.text("lower(traits->>'email')")),
    sa.Index("ix_customers_stage", "stage", "customer_id"),
    sa.Index("ix_customers_rfm_segment", sa.text("(scores->>'rfm_segment')"), "customer_id"),
)

# One row per trigger match: sent, to be sent, suppressed or held out.
actions = sa.Table(
    "actions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("trigger_id", sa.Text, nullable=False),
    sa.Column("trigger_version", sa.Integer, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    # pending, sending, delivered, failed, suppressed, held_out
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("suppressed_reason", sa.Text),
    sa.Column("deferred_reason", sa.Text),  # delay, quiet_hours: held, not dropped
    sa.Column("target", JSONB, nullable=False),  # rendered destination (url, address, topic)
    sa.Column("payload", sa.Text),  # rendered body
    sa.Column("cause_event", sa.Text, nullable=False),
    sa.Column("cause_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # When to send; while sending, when the claim lapses (a crashed sender's action is
    # then claimed again).
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("conversion_window_seconds", sa.Integer, nullable=False),
    sa.Column("converted_at", sa.DateTime(timezone=True)),
    # Which customer entry the action is for (re-entry control): `<stage>#<n>` for a
    # transition trigger, the causing event otherwise.
    sa.Column("entry_key", sa.Text),
    # The causing event as conditions see it, kept when the condition reads `event`, so
    # the send-time re-check evaluates the same expression.
    sa.Column("occasion", JSONB),
    # Receipts and the like: exempt from the global cap (and not counted by it).
    sa.Column("transactional", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_actions_customer", "customer_id", "created_at"),
    sa.Index("ix_actions_cause", "cause_event"),
    sa.Index("ix_actions_trigger", "trigger_id", "status"),
    sa.Index(
        "ix_actions_due",
        "due_at",
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    ),
)

# A segment: a CEL condition over the projection (no event). Every change is also kept in
# segment_versions; `recompute` is the background recomputation's progress.
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("condition", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_by", sa.Text, nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    # {"version", "done", "total", "after", "finished_at"}
    sa.Column("recompute", JSONB),
)

segment_versions = sa.Table(
    "segment_versions",
    metadata,
    sa.Column("segment_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("change", sa.Text, nullable=False),  # created, updated, deleted
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("condition", sa.Text, nullable=False),
    sa.Column("changed_by", sa.Text, nullable=False),  # API key id
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

# Who is in each segment now. Rows go with the customer's projection row (erasure, an
# identity merge dropping the anonymous id) and with the segment.
segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column(
        "segment_id",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.segments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "customer_id",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.customers.customer_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("segment_version", sa.Integer, nullable=False),  # that last decided it
    sa.Index("ix_segment_members_customer", "customer_id"),
)

# A segment's size, sampled once per interval (`at`: the interval's start) by whichever
# replica gets there first.
segment_sizes = sa.Table(
    "segment_sizes",
    metadata,
    sa.Column(
        "segment_id",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.segments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("members", sa.BigInteger, nullable=False),
)

# A journey: a multi-step campaign (domain/journeys.py). Versioned like triggers.
journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("definition", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_by", sa.Text, nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)

journey_versions = sa.Table(
    "journey_versions",
    metadata,
    sa.Column("journey_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("change", sa.Text, nullable=False),  # created, updated, enabled, disabled, deleted
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("definition", JSONB, nullable=False),
    sa.Column("changed_by", sa.Text, nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

# A customer's run through a journey: one row per entry, on the version it entered with.
# `step_id` is where the run is; while `active` or `waiting` it runs (again) at `due_at`,
# which the journey runner claims with SKIP LOCKED.
journey_runs = sa.Table(
    "journey_runs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("journey_id", sa.Text, nullable=False),
    sa.Column("journey_version", sa.Integer, nullable=False),
    sa.Column(
        "customer_id",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.customers.customer_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("entry_key", sa.Text, nullable=False),  # which entry (re-entry control)
    sa.Column("status", sa.Text, nullable=False),  # active, waiting, completed, exited
    sa.Column("step_id", sa.Text),
    sa.Column("due_at", sa.DateTime(timezone=True)),
    # When the run reached its step, in the customer's event time: the entry event's time,
    # then each wait's scheduled end. Waits count from it, not from when a pass ran.
    sa.Column("step_at", sa.DateTime(timezone=True), nullable=False),
    # Times of the events its wait_for steps watch, as consumed (type -> ISO times): a
    # wait_for decides by event time whatever order the events arrived in.
    sa.Column("seen", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("arm", sa.Text),  # the arm of the last split it passed
    sa.Column("cause_event", sa.Text, nullable=False),
    sa.Column("cause_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("occasion", JSONB),  # the entry's event, as templates see it
    sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("exit_reason", sa.Text),
    sa.Column("converted_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("journey_id", "customer_id", "entry_key"),
    sa.Index(
        "ix_journey_runs_due",
        "due_at",
        postgresql_where=sa.text("status IN ('active', 'waiting')"),
    ),
    sa.Index("ix_journey_runs_customer", "customer_id", "journey_id"),
)

# Each step a run went through, once (the key): what the funnel counts.
journey_steps = sa.Table(
    "journey_steps",
    metadata,
    sa.Column(
        "run_id",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.journey_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("step_id", sa.Text, primary_key=True),
    sa.Column("journey_id", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("late_seconds", sa.Float, nullable=False),  # after its due time (a downtime)
    sa.Column("outcome", sa.Text, nullable=False),  # sent, suppressed, then, else, arm, ...
    sa.Column("arm", sa.Text),  # the run's split arm so far
    sa.Column("action_id", sa.Text),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),  # the order they ran in
    sa.Index("ix_journey_steps_journey", "journey_id", "step_id"),
)

# Why a customer did not enter a journey, the last time an occasion could have entered them.
journey_decisions = sa.Table(
    "journey_decisions",
    metadata,
    sa.Column("journey_id", sa.Text, primary_key=True),
    sa.Column(
        "customer_id",
        sa.Text,
        sa.ForeignKey(f"{SCHEMA}.customers.customer_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", JSONB, nullable=False),
)

# The service's clock offset, when clock control is enabled (tests, demos): time moved
# forward for every replica, kept across restarts.
clock = sa.Table(
    "clock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("offset_seconds", sa.Float, nullable=False),
)
