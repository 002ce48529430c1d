"""RFM: the quintiles, cell and segment on each score, versioned cut points, and the
history of each customer's segment changes.

Backward compatible: the previous release ignores the new columns and tables.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

from clm_scoring.models import SCHEMA

revision = "0006"
down_revision = "0005"

SCORE_COLUMNS = (
    ("rfm_recency", sa.SmallInteger),
    ("rfm_frequency", sa.SmallInteger),
    ("rfm_monetary", sa.SmallInteger),
    ("rfm_cell", sa.Text),
    ("rfm_segment", sa.Text),
    ("rfm_version", sa.BigInteger),
    ("published_rfm_cell", sa.Text),
)


def upgrade() -> None:
    for name, kind in SCORE_COLUMNS:
        op.add_column("scores", sa.Column(name, kind), schema=SCHEMA)
    op.create_table(
        "rfm_cuts",
        sa.Column("version", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("trigger", sa.Text, nullable=False),
        sa.Column("recency", ARRAY(sa.Float), nullable=False),
        sa.Column("frequency", ARRAY(sa.Float), nullable=False),
        sa.Column("monetary", ARRAY(sa.Float), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "rfm_moves",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_segment", sa.Text),
        sa.Column("to_segment", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_rfm_moves_customer_id_moved_at",
        "rfm_moves",
        ["customer_id", "moved_at"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("rfm_moves", schema=SCHEMA)
    op.drop_table("rfm_cuts", schema=SCHEMA)
    for name, _ in SCORE_COLUMNS:
        op.drop_column("scores", name, schema=SCHEMA)
