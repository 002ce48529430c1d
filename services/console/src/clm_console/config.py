from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings


class Settings(ServiceSettings):
    """The console keeps no state: it serves pages and forwards API calls, with the
    caller's key, to the four services at these addresses. (Of the settings every
    service shares it uses the host, the port and the database, for the key table.)"""

    model_config = SettingsConfigDict(env_prefix="CLM_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8005
    ingest_url: str = Field("http://127.0.0.1:8001", description="Base URL of ingest.")
    stage_engine_url: str = Field("http://127.0.0.1:8002", description="Stage engine.")
    scoring_url: str = Field("http://127.0.0.1:8003", description="Scoring.")
    campaigns_url: str = Field("http://127.0.0.1:8004", description="Campaigns.")
    proxy_timeout: float = Field(30.0, gt=0, description="Seconds to wait for a service.")
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest request body the console forwards."
    )

    def backends(self) -> dict[str, str]:
        """Proxy name (the first segment after /api/) -> base URL."""
        return {
            "ingest": self.ingest_url,
            "stage-engine": self.stage_engine_url,
            "scoring": self.scoring_url,
            "campaigns": self.campaigns_url,
        }
