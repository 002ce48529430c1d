"""Customers (timeline + queryable columns), transition history, lifecycle models.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_stage_engine.models import SCHEMA

revision = "0002"
down_revision = "0001"


def _now() -> sa.Column[object]:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    op.create_table(
        "customers",
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
        _now(),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_customers_due_at",
        "customers",
        ["due_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("due_at IS NOT NULL"),
    )
    op.create_index("ix_customers_model_version", "customers", ["model_version"], schema=SCHEMA)
    op.create_index("ix_customers_stage", "customers", ["stage"], schema=SCHEMA)
    op.create_table(
        "transitions",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
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
        schema=SCHEMA,
    )
    op.create_index("ix_transitions_at", "transitions", ["at"], schema=SCHEMA)
    op.create_table(
        "lifecycle_models",
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("created_by", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("lifecycle_models", schema=SCHEMA)
    op.drop_table("transitions", schema=SCHEMA)
    op.drop_table("customers", schema=SCHEMA)
