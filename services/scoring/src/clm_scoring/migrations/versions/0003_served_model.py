"""Model versions say how they were estimated, carry what the served-model event carries
(the top CLV decile, the horizon and discount they were served with) and when their
event was queued (null: not published, as it scored everyone as the last published one,
or stored before the event existed).

Backward compatible: the previous release ignores the columns.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from clm_scoring.models import SCHEMA

revision = "0003"
down_revision = "0002"

COLUMNS = (
    ("estimator", sa.Text),
    ("clv_top_decile", sa.Float),
    ("horizon_months", sa.Integer),
    ("monthly_discount_rate", sa.Float),
    ("published_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("model_versions", sa.Column(name, kind), schema=SCHEMA)


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("model_versions", name, schema=SCHEMA)
