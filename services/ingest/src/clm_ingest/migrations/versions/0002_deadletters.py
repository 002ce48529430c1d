"""The dead-letter store.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_ingest.models import SCHEMA

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "deadletters",
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source_topic", sa.Text, nullable=False),
        sa.Column("source_partition", sa.Integer),
        sa.Column("source_offset", sa.BigInteger),
        sa.Column("consumer_group", sa.Text),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("replay_of", sa.Text),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index("deadletters_at", "deadletters", ["at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("deadletters", schema=SCHEMA)
