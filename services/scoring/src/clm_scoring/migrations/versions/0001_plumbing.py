"""Outbox and processed-events tables.

Revision ID: 0001
"""

from clm_events.migrations import create_plumbing_tables_v1
from clm_scoring.models import SCHEMA

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_plumbing_tables_v1(SCHEMA)
