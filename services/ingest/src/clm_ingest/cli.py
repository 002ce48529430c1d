from pathlib import Path

from clm_events.cli import service_cli
from clm_ingest import deadletter, privacy_cli
from clm_ingest.config import Settings
from clm_ingest.models import SCHEMA

app = service_cli(
    name="ingest",
    app_path="clm_ingest.main:create_app",
    migrations=Path(__file__).parent / "migrations",
    schema=SCHEMA,
    settings=Settings,
)
app.add_typer(deadletter.cli, name="deadletter")
app.add_typer(privacy_cli.cli, name="privacy")
