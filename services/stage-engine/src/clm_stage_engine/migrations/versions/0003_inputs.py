"""Inputs move out of the timeline blob into a table of their own, one row per input.

Not backward compatible: the previous stage engine cannot read the rows this leaves, so
stop it before upgrading (docs/operations.md, "Upgrades and migrations").

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from clm_stage_engine.models import SCHEMA

revision = "0003"
down_revision = "0002"

_CUSTOMERS = f"{SCHEMA}.customers"
_INPUTS = f"{SCHEMA}.inputs"


def upgrade() -> None:
    op.create_table(
        "inputs",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("input", sa.LargeBinary, nullable=False),
        schema=SCHEMA,
    )
    # Existing timelines: [at, source, id, type, data] per input. The rows keep no fold;
    # the first event or tick of each customer rebuilds it from these inputs.
    op.execute(
        f"INSERT INTO {_INPUTS} (customer_id, source, event_id, at, input) "
        "SELECT c.customer_id, i->>1, i->>2, (i->>0)::bigint, convert_to(i::text, 'UTF8') "
        f"FROM {_CUSTOMERS} c, "
        "jsonb_array_elements(convert_from(c.timeline, 'UTF8')::jsonb -> 'i') AS i "
        "ON CONFLICT DO NOTHING"
    )
    op.execute(
        f"UPDATE {_CUSTOMERS} SET timeline = "
        "convert_to((convert_from(timeline, 'UTF8')::jsonb - 'i' - 'a')::text, 'UTF8')"
    )


def downgrade() -> None:
    op.execute(
        f"UPDATE {_CUSTOMERS} c SET timeline = convert_to(("
        "(convert_from(c.timeline, 'UTF8')::jsonb - 'a') || jsonb_build_object('i', "
        "coalesce((SELECT jsonb_agg(convert_from(i.input, 'UTF8')::jsonb "
        "ORDER BY i.at, i.source, i.event_id) "
        f"FROM {_INPUTS} i WHERE i.customer_id = c.customer_id), '[]'::jsonb)))::text, 'UTF8')"
    )
    op.drop_table("inputs", schema=SCHEMA)
