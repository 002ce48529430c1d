"""Lifecycle model versions carry the served score model: the stage engine evaluates the
scores its rules read itself, as of each moment, under it.

Backward compatible: the previous release ignores the column.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_stage_engine.models import SCHEMA

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column("lifecycle_models", sa.Column("score_model", JSONB), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("lifecycle_models", "score_model", schema=SCHEMA)
