"""Actions follow the settled history: each action names the customer entry it is for
(re-entry control), keeps the causing event when its condition reads it (re-checked at
send time), and is found by its causing transition when that is retracted. The
projection remembers which transition set the customer's stage.

Backward compatible: the previous release ignores the new columns.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_campaigns.models import SCHEMA

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("actions", sa.Column("entry_key", sa.Text), schema=SCHEMA)
    op.add_column("actions", sa.Column("occasion", JSONB), schema=SCHEMA)
    op.create_index("ix_actions_cause", "actions", ["cause_event"], schema=SCHEMA)
    op.add_column("customers", sa.Column("stage_transition", sa.Text), schema=SCHEMA)
    op.add_column("customers", sa.Column("stage_entry", sa.Integer), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("customers", "stage_entry", schema=SCHEMA)
    op.drop_column("customers", "stage_transition", schema=SCHEMA)
    op.drop_index("ix_actions_cause", "actions", schema=SCHEMA)
    op.drop_column("actions", "occasion", schema=SCHEMA)
    op.drop_column("actions", "entry_key", schema=SCHEMA)
