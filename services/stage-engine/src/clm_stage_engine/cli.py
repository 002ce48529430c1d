from pathlib import Path

from clm_events.cli import service_cli
from clm_stage_engine.config import Settings
from clm_stage_engine.models import SCHEMA

app = service_cli(
    name="stage-engine",
    app_path="clm_stage_engine.main:create_app",
    migrations=Path(__file__).parent / "migrations",
    schema=SCHEMA,
    settings=Settings,
)
