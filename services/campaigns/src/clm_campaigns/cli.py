from pathlib import Path

from clm_campaigns.config import Settings
from clm_campaigns.models import SCHEMA
from clm_events.cli import service_cli

app = service_cli(
    name="campaigns",
    app_path="clm_campaigns.main:create_app",
    migrations=Path(__file__).parent / "migrations",
    schema=SCHEMA,
    settings=Settings,
)
