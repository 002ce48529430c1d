"""Each customer's segment memberships on their projection row too (segment id ->
version), filled from segment_members.

Backward compatible: the previous release ignores the column (and would leave it stale:
do not run both against one database for long; the next recompute of each segment
rewrites it).

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_campaigns.models import SCHEMA

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column(
        "customers",
        sa.Column("segments", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=SCHEMA,
    )
    op.execute(f"""
        UPDATE {SCHEMA}.customers c SET segments = m.segments
        FROM (SELECT customer_id, jsonb_object_agg(segment_id, segment_version) AS segments
              FROM {SCHEMA}.segment_members GROUP BY customer_id) m
        WHERE c.customer_id = m.customer_id
    """)


def downgrade() -> None:
    op.drop_column("customers", "segments", schema=SCHEMA)
