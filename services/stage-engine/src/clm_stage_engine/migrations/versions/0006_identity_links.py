"""Identity links: each anonymous id whose state was merged into a known customer, so
the anonymous id's events that arrive later count for the customer.

Backward compatible: the previous release ignores the table.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

from clm_stage_engine.models import SCHEMA

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "identity_links",
        sa.Column("anonymous_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column(
            "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_identity_links_customer_id", "identity_links", ["customer_id"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_table("identity_links", schema=SCHEMA)
