"""Privacy: tombstones of erased ids, so their later events are dropped.

Backward compatible: the previous release ignores the new table.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

from clm_campaigns.models import SCHEMA

revision = "0005"
down_revision = "0004"


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


def downgrade() -> None:
    op.drop_table("privacy_tombstones", schema=SCHEMA)
