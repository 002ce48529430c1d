"""Tables of the scoring service, all in its own schema."""

import sqlalchemy as sa

from clm_events.db import outbox_table, processed_events_table

SCHEMA = "scoring"
metadata = sa.MetaData(schema=SCHEMA)
outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
