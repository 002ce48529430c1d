"""Segment sizes over time: one sample per segment per interval.

Backward compatible: the previous release ignores the new table.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

from clm_campaigns.models import SCHEMA

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "segment_sizes",
        sa.Column(
            "segment_id",
            sa.Text,
            sa.ForeignKey(f"{SCHEMA}.segments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("members", sa.BigInteger, nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("segment_sizes", schema=SCHEMA)
