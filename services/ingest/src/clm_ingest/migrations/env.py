from clm_events.migrations import run_env
from clm_ingest.models import SCHEMA, metadata

run_env(metadata, SCHEMA)
