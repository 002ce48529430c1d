"""Tables of the stage-engine service, all in its own schema."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from clm_events.db import outbox_table, processed_events_table
from clm_events.privacy import tombstones_table

SCHEMA = "stage_engine"
metadata = sa.MetaData(schema=SCHEMA)
outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
privacy_tombstones = tombstones_table(metadata)

# One row per customer. `timeline` holds the customer's compact stage history and the fold
# of their inputs (JSON, see domain.timeline.Timeline.to_json); the columns next to it
# are what queries filter or aggregate on.
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text),
    sa.Column("stage_since", sa.DateTime(timezone=True)),
    sa.Column("evaluated_until", sa.DateTime(timezone=True)),
    sa.Column("due_at", sa.DateTime(timezone=True)),
    sa.Column("model_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("clv", sa.Float),
    sa.Column("churn_probability", sa.Float),
    sa.Column("latest_nps", sa.Integer),
    sa.Column("timeline", sa.LargeBinary, nullable=False),
    # The timer leaves the customer alone until then: their inputs are still arriving.
    sa.Column("settle_until", sa.DateTime(timezone=True)),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Index("ix_customers_due_at", "due_at", postgresql_where=sa.text("due_at IS NOT NULL")),
    sa.Index("ix_customers_model_version", "model_version"),
    sa.Index("ix_customers_stage", "stage"),
)

# Every input of every customer, one row each, written once: an event in order only adds
# its row, and only a late event (which replays the customer's history) reads them back.
inputs = sa.Table(
    "inputs",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("at", sa.BigInteger, nullable=False),  # event time, µs since the epoch
    sa.Column("input", sa.LargeBinary, nullable=False),  # JSON, domain.inputs.Input.to_json
)

transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # 0-based, per customer
    sa.Column("transition_id", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("from_stage", sa.Text),
    sa.Column("to_stage", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("event_source", sa.Text),
    sa.Column("event_id", sa.Text),
    sa.Column("event_type", sa.Text),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("facts", JSONB, nullable=False),
    sa.Column(
        "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Index("ix_transitions_at", "at"),
)

# Each anonymous id merged into a known customer (the first link wins; ingest's guards
# decide which links exist). Events of the anonymous id that arrive later count for the
# customer.
identity_links = sa.Table(
    "identity_links",
    metadata,
    sa.Column("anonymous_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column(
        "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Index("ix_identity_links_customer_id", "customer_id"),
)

lifecycle_models = sa.Table(
    "lifecycle_models",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", JSONB, nullable=False),
    # The score model scoring served when this version was made (clm_events.scoremodel):
    # rules reading scores evaluate under it.
    sa.Column("score_model", JSONB),
    sa.Column("created_by", sa.Text),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

# The transitions of erased customers, with nothing that names the person (no customer
# id, facts or event ids), so the flows of a past window still add up after an erasure.
erased_transitions = sa.Table(
    "erased_transitions",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("from_stage", sa.Text),
    sa.Column("to_stage", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Index("ix_erased_transitions_at", "at"),
)
