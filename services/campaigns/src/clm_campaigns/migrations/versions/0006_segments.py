"""Segments: a CEL condition over the customer projection, versioned like triggers, and
its members kept live (rows cascade away with the customer's projection row: erasure,
identity merges).

Backward compatible: the previous release ignores the new tables.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_campaigns.models import SCHEMA

revision = "0006"
down_revision = "0005"

_now = sa.func.now()


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("condition", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("updated_by", sa.Text, nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("recompute", JSONB),
        schema=SCHEMA,
    )
    op.create_table(
        "segment_versions",
        sa.Column("segment_id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("change", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("condition", sa.Text, nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        schema=SCHEMA,
    )
    op.create_table(
        "segment_members",
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
        sa.Column("segment_version", sa.Integer, nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_segment_members_customer", "segment_members", ["customer_id"], schema=SCHEMA
    )
    # The customer list's filters.
    op.create_index("ix_customers_stage", "customers", ["stage", "customer_id"], schema=SCHEMA)
    op.create_index(
        "ix_customers_rfm_segment",
        "customers",
        [sa.text("(scores->>'rfm_segment')"), "customer_id"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index("ix_customers_rfm_segment", "customers", schema=SCHEMA)
    op.drop_index("ix_customers_stage", "customers", schema=SCHEMA)
    op.drop_table("segment_members", schema=SCHEMA)
    op.drop_table("segment_versions", schema=SCHEMA)
    op.drop_table("segments", schema=SCHEMA)
