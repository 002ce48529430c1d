"""Tables of the ingest service, all in its own schema."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from clm_events.db import outbox_table, processed_events_table
from clm_events.privacy import tombstones_table

SCHEMA = "ingest"
metadata = sa.MetaData(schema=SCHEMA)
outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
privacy_tombstones = tombstones_table(metadata)

# Every message of the dead-letter topic (all services'), keyed by its place on that topic.
deadletters = sa.Table(
    "deadletters",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("source_topic", sa.Text, nullable=False),
    sa.Column("source_partition", sa.Integer),
    sa.Column("source_offset", sa.BigInteger),
    sa.Column("consumer_group", sa.Text),
    sa.Column("key", sa.LargeBinary),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("headers", JSONB, nullable=False),  # [[name, base64 value], ...]
    sa.Column("replay_of", sa.Text),  # set when this message failed again after a replay
    sa.Column("replayed_at", sa.DateTime(timezone=True)),
    sa.Index("deadletters_at", "at"),
)

# The identity graph: each anonymous id linked to the known customer it belongs to. One
# level deep (see domain/identity.py), so resolving an id is one lookup.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("anonymous_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # the identity.linked event that linked it
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column(
        "linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Index("identities_customer", "customer_id"),
)

# The audit trail of erasures: who asked and when, and which services finished. No PII:
# neither the ids nor the email, only how many ids the request resolved to.
erasure_requests = sa.Table(
    "erasure_requests",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("requested_by", sa.Text, nullable=False),  # API key id
    sa.Column("selector", sa.Text, nullable=False),  # customer_id or email: how, not who
    sa.Column("ids", sa.Integer, nullable=False),
    sa.Column(
        "requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # service -> {"completed_at": ..., "erased": {table: rows}}
    sa.Column("services", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Index("erasure_requests_requested_at", "requested_at"),
)
