"""Privacy: tombstones of erased ids and the audit trail of erasure requests.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_ingest.models import SCHEMA

revision = "0004"
down_revision = "0003"


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
        "erasure_requests",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("selector", sa.Text, nullable=False),
        sa.Column("ids", sa.Integer, nullable=False),
        sa.Column(
            "requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("services", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index(
        "erasure_requests_requested_at", "erasure_requests", ["requested_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_table("erasure_requests", schema=SCHEMA)
    op.drop_table("privacy_tombstones", schema=SCHEMA)
