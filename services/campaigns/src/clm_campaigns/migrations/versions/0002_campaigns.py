"""Triggers and their versions, the customer projection, actions.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from clm_campaigns.models import SCHEMA

revision = "0002"
down_revision = "0001"


def _ts(name: str, nullable: bool = True, default: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default else None,
    )


def upgrade() -> None:
    op.create_table(
        "triggers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("definition", JSONB, nullable=False),
        _ts("created_at", nullable=False, default=True),
        _ts("updated_at", nullable=False, default=True),
        sa.Column("updated_by", sa.Text, nullable=False),
        _ts("deleted_at"),
        schema=SCHEMA,
    )
    op.create_table(
        "trigger_versions",
        sa.Column("trigger_id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("change", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
        _ts("changed_at", nullable=False, default=True),
        schema=SCHEMA,
    )
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text),
        _ts("stage_at"),
        sa.Column("traits", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("facts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("scores", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("scores_at"),
        sa.Column("recent_purchases", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        _ts("updated_at", nullable=False, default=True),
        schema=SCHEMA,
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("trigger_id", sa.Text, nullable=False),
        sa.Column("trigger_version", sa.Integer, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("suppressed_reason", sa.Text),
        sa.Column("deferred_reason", sa.Text),
        sa.Column("target", JSONB, nullable=False),
        sa.Column("payload", sa.Text),
        sa.Column("cause_event", sa.Text, nullable=False),
        _ts("cause_time", nullable=False),
        _ts("created_at", nullable=False),
        _ts("due_at", nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        _ts("delivered_at"),
        sa.Column("conversion_window_seconds", sa.Integer, nullable=False),
        _ts("converted_at"),
        schema=SCHEMA,
    )
    op.create_index("ix_actions_customer", "actions", ["customer_id", "created_at"], schema=SCHEMA)
    op.create_index("ix_actions_trigger", "actions", ["trigger_id", "status"], schema=SCHEMA)
    op.create_index(
        "ix_actions_due",
        "actions",
        ["due_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )


def downgrade() -> None:
    for table in ("actions", "customers", "trigger_versions", "triggers"):
        op.drop_table(table, schema=SCHEMA)
