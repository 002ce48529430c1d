"""Outbox and processed-events tables.

Revision ID: 0001
"""

from clm_campaigns.models import SCHEMA
from clm_events.migrations import create_plumbing_tables_v1

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_plumbing_tables_v1(SCHEMA)
