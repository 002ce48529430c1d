from pathlib import Path

from clm_events.cli import service_cli
from clm_scoring.config import Settings
from clm_scoring.models import SCHEMA

app = service_cli(
    name="scoring",
    app_path="clm_scoring.main:create_app",
    migrations=Path(__file__).parent / "migrations",
    schema=SCHEMA,
    settings=Settings,
)
