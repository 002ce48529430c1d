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
