"""Privacy erasure: the tombstones of erased ids (keyed hashes, clm_events.privacy) and
the anonymous transitions of erased customers, which the flows keep counting.

Backward compatible: the previous release ignores both tables.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

from clm_stage_engine.models import SCHEMA

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "privacy_tombstones",
        sa.Column("id_hash", sa.LargeBinary, primary_key=True),
        sa.Column(
            "erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_privacy_tombstones_expires_at", "privacy_tombstones", ["expires_at"], schema=SCHEMA
    )
    op.create_table(
        "erased_transitions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_stage", sa.Text),
        sa.Column("to_stage", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_erased_transitions_at", "erased_transitions", ["at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("erased_transitions", schema=SCHEMA)
    op.drop_table("privacy_tombstones", schema=SCHEMA)
