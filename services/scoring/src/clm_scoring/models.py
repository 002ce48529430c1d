"""Tables of the scoring service, all in its own schema."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from clm_events.db import outbox_table, processed_events_table
from clm_events.privacy import tombstones_table

SCHEMA = "scoring"
metadata = sa.MetaData(schema=SCHEMA)
outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
# Keyed hashes of erased ids: their events are dropped on arrival (clm_events.privacy).
privacy_tombstones = tombstones_table(metadata)

# One row per order: purchases and refunds of an order meet here whatever their order
# of arrival, so the summary never depends on it.
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("purchased_on", sa.Date),  # null: only a refund seen so far
    sa.Column("amount", sa.Numeric),
    sa.Column("refunded", sa.Numeric, nullable=False, server_default="0"),
)

# The BTYD history per customer (x, t_x and spend; T follows from the scoring date).
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("first_purchase_on", sa.Date, nullable=False),
    sa.Column("last_purchase_on", sa.Date, nullable=False),
    sa.Column("purchase_days", sa.Integer, nullable=False),
    sa.Column("first_spend", sa.Numeric, nullable=False),
    sa.Column("repeat_spend", sa.Numeric, nullable=False),
)

# Each anonymous id merged into a known customer (the first link wins), so that the
# anonymous id's purchases and refunds arriving later count for the customer.
identity_links = sa.Table(
    "identity_links",
    metadata,
    sa.Column("anonymous_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column(
        "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

scores = sa.Table(
    "scores",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("p_alive", sa.Float, nullable=False),
    sa.Column("churn_probability", sa.Float, nullable=False),
    sa.Column("expected_purchases", sa.Float, nullable=False),
    sa.Column("expected_spend", sa.Float, nullable=False),
    sa.Column("clv", sa.Float, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("model_version", sa.BigInteger),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    # What clm.scores last carried, to publish only material moves.
    sa.Column("published_churn_probability", sa.Float),
    sa.Column("published_clv", sa.Float),
    sa.Column("published_model", sa.Text),
    sa.Column("published_count", sa.Integer, nullable=False, server_default="0"),
    # RFM quintiles (5: most recent, frequent, spent), cell and segment under the cut
    # points of rfm_version; null while no cut points exist.
    sa.Column("rfm_recency", sa.SmallInteger),
    sa.Column("rfm_frequency", sa.SmallInteger),
    sa.Column("rfm_monetary", sa.SmallInteger),
    sa.Column("rfm_cell", sa.Text),
    sa.Column("rfm_segment", sa.Text),
    sa.Column("rfm_version", sa.BigInteger),
    sa.Column("published_rfm_cell", sa.Text),
)

# Versioned RFM cut points: four per measure, ascending on its raw scale (recency in
# days since the last purchase as of `as_of`, purchase days, spend).
rfm_cuts = sa.Table(
    "rfm_cuts",
    metadata,
    sa.Column("version", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("recency", ARRAY(sa.Float), nullable=False),
    sa.Column("frequency", ARRAY(sa.Float), nullable=False),
    sa.Column("monetary", ARRAY(sa.Float), nullable=False),
    # When they were queued on the models topic with the served model; null: not
    # announced (no model yet, or the same points as the last announced ones).
    sa.Column("published_at", sa.DateTime(timezone=True)),
)

# A row each time a customer's RFM segment changes (from null: their first one), so that
# the moves over a window are one grouped query.
rfm_moves = sa.Table(
    "rfm_moves",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("from_segment", sa.Text),
    sa.Column("to_segment", sa.Text, nullable=False),
    sa.Index("ix_rfm_moves_customer_id_moved_at", "customer_id", "moved_at"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("version", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("time_unit", sa.Text, nullable=False),
    sa.Column("purchase_params", JSONB),
    sa.Column("spend_params", JSONB),
    sa.Column("typical_gap", sa.Float, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("repeat_customers", sa.Integer, nullable=False),
    sa.Column("log_likelihood", sa.Float),
    sa.Column("spend_log_likelihood", sa.Float),
    sa.Column("window_start", sa.Date),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("duration_seconds", sa.Float, nullable=False),
    sa.Column("notes", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column(
        "fitted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # Null in versions stored before migration 0003.
    sa.Column("estimator", sa.Text),  # mle or map
    sa.Column("clv_top_decile", sa.Float),  # null: nobody had a score
    sa.Column("horizon_months", sa.Integer),
    sa.Column("monthly_discount_rate", sa.Float),
    # When its lifecycle.score_model_served was queued; null: not published.
    sa.Column("published_at", sa.DateTime(timezone=True)),
)
