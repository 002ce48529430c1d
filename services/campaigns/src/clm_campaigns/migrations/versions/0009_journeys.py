"""Journeys: multi-step campaigns, their customers' runs and the steps each run went
through; why a customer did not enter; the clock offset of clock control; and which
actions are transactional (exempt from the global cap).

Backward compatible: the previous release ignores the new tables and the new column
(its default, false, is what every earlier action was).

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_campaigns.models import SCHEMA

revision = "0009"
down_revision = "0008"

_now = sa.func.now()
_CUSTOMER = f"{SCHEMA}.customers.customer_id"


def upgrade() -> None:
    op.add_column(
        "actions",
        sa.Column("transactional", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=SCHEMA,
    )
    op.create_table(
        "journeys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        sa.Column("updated_by", sa.Text, nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_table(
        "journey_versions",
        sa.Column("journey_id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("change", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
        schema=SCHEMA,
    )
    op.create_table(
        "journey_runs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("journey_id", sa.Text, nullable=False),
        sa.Column("journey_version", sa.Integer, nullable=False),
        sa.Column(
            "customer_id", sa.Text, sa.ForeignKey(_CUSTOMER, ondelete="CASCADE"), nullable=False
        ),
        sa.Column("entry_key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("step_id", sa.Text),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("step_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("arm", sa.Text),
        sa.Column("cause_event", sa.Text, nullable=False),
        sa.Column("cause_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occasion", JSONB),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("exit_reason", sa.Text),
        sa.Column("converted_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("journey_id", "customer_id", "entry_key"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_journey_runs_due",
        "journey_runs",
        ["due_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('active', 'waiting')"),
    )
    op.create_index(
        "ix_journey_runs_customer", "journey_runs", ["customer_id", "journey_id"], schema=SCHEMA
    )
    op.create_table(
        "journey_steps",
        sa.Column(
            "run_id",
            sa.Text,
            sa.ForeignKey(f"{SCHEMA}.journey_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("step_id", sa.Text, primary_key=True),
        sa.Column("journey_id", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("late_seconds", sa.Float, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("arm", sa.Text),
        sa.Column("action_id", sa.Text),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_journey_steps_journey", "journey_steps", ["journey_id", "step_id"], schema=SCHEMA
    )
    op.create_table(
        "journey_decisions",
        sa.Column("journey_id", sa.Text, primary_key=True),
        sa.Column(
            "customer_id",
            sa.Text,
            sa.ForeignKey(_CUSTOMER, ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", JSONB, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "clock",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("offset_seconds", sa.Float, nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("clock", "journey_decisions", "journey_steps", "journey_runs"):
        op.drop_table(table, schema=SCHEMA)
    op.drop_table("journey_versions", schema=SCHEMA)
    op.drop_table("journeys", schema=SCHEMA)
    op.drop_column("actions", "transactional", schema=SCHEMA)
