from clm_events.auth import SCHEMA, metadata
from clm_events.migrations import run_env

run_env(metadata, SCHEMA)
