"""Customers get a settle time: the timer leaves a customer alone until their inputs have
stopped arriving for a while (see handlers.StageEngine.settle_seconds).

Backward compatible: the previous release ignores the column.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

from clm_stage_engine.models import SCHEMA

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("customers", sa.Column("settle_until", sa.DateTime(timezone=True)), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("customers", "settle_until", schema=SCHEMA)
