"""RFM cut points are announced with the served model: when each version was queued.

Backward compatible: the previous release ignores the new column.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

from clm_scoring.models import SCHEMA

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column("rfm_cuts", sa.Column("published_at", sa.DateTime(timezone=True)), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("rfm_cuts", "published_at", schema=SCHEMA)
