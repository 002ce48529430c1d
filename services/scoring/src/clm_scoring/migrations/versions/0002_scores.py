"""Orders, purchase histories, scores and versioned model parameters.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_scoring.models import SCHEMA

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("purchased_on", sa.Date),
        sa.Column("amount", sa.Numeric),
        sa.Column("refunded", sa.Numeric, nullable=False, server_default="0"),
        schema=SCHEMA,
    )
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("first_purchase_on", sa.Date, nullable=False),
        sa.Column("last_purchase_on", sa.Date, nullable=False),
        sa.Column("purchase_days", sa.Integer, nullable=False),
        sa.Column("first_spend", sa.Numeric, nullable=False),
        sa.Column("repeat_spend", sa.Numeric, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "scores",
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
        sa.Column("published_churn_probability", sa.Float),
        sa.Column("published_clv", sa.Float),
        sa.Column("published_model", sa.Text),
        sa.Column("published_count", sa.Integer, nullable=False, server_default="0"),
        schema=SCHEMA,
    )
    op.create_table(
        "model_versions",
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
            "fitted_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("model_versions", "scores", "customers", "orders"):
        op.drop_table(table, schema=SCHEMA)
