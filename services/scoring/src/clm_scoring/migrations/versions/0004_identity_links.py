"""Identity links: each anonymous id whose orders were merged into a known customer, so
the anonymous id's purchases and refunds that arrive later count for the customer.

Backward compatible: the previous release ignores the table.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

from clm_scoring.models import SCHEMA

revision = "0004"
down_revision = "0003"


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


def downgrade() -> None:
    op.drop_table("identity_links", schema=SCHEMA)
