from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_CAMPAIGNS_", extra="ignore")

    port: int = 8004
    group_id: str = "clm-campaigns"
