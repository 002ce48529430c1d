"""Tables of the stage-engine service, all in its own schema."""

import sqlalchemy as sa

from clm_events.db import outbox_table, processed_events_table

SCHEMA = "stage_engine"
metadata = sa.MetaData(schema=SCHEMA)
outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
