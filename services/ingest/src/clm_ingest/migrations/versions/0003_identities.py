"""The identity graph: anonymous id -> known customer.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from clm_ingest.models import SCHEMA

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("anonymous_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column(
            "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_index("identities_customer", "identities", ["customer_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("identities", schema=SCHEMA)
