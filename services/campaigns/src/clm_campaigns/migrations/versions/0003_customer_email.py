"""Find customers by email (the console's search).

Revision ID: 0003
"""

from alembic import op

from clm_campaigns.models import SCHEMA

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute(
        f"CREATE INDEX IF NOT EXISTS customers_email ON {SCHEMA}.customers "
        "(lower(traits->>'email'))"
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {SCHEMA}.customers_email")
