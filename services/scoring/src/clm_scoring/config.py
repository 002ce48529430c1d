from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_SCORING_", extra="ignore")

    port: int = 8003
    group_id: str = "clm-scoring"
