from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings
from clm_stage_engine.domain.timeline import LOOK_AHEAD
from clm_stage_engine.handlers import SETTLE_SECONDS


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_STAGE_ENGINE_", extra="ignore")

    port: int = 8002
    group_id: str = "clm-stage-engine"
    timer_interval: float = Field(1.0, gt=0, description="Seconds between timer sweeps.")
    timer_batch_size: int = Field(2000, ge=1, description="Customers per timer transaction.")
    timer_workers: int = Field(2, ge=1, description="Timer transactions run at once.")
    timer_look_ahead_days: int = Field(
        LOOK_AHEAD,
        ge=0,
        le=400,
        description="Days the timer probes ahead for a customer's next possible stage change; "
        "more means rarer re-checks and longer probes.",
    )
    settle_seconds: float = Field(
        SETTLE_SECONDS,
        ge=0,
        le=86_400,
        description="Seconds after a customer's latest event before time alone may move "
        "them: a history arriving event by event settles first instead of being moved to "
        "now after each event and rewritten by the next.",
    )
