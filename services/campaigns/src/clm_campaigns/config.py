from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings


class ChannelCap(BaseModel):
    max: int = Field(ge=1)
    period_seconds: int = Field(ge=1)


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_CAMPAIGNS_", extra="ignore")

    port: int = 8004
    group_id: str = "clm-campaigns"

    # Global contact cap: at most this many marketing messages per customer and channel per
    # period, over every trigger and journey (transactional ones are exempt and not counted).
    global_cap_max: int = Field(5, ge=1)
    global_cap_period_seconds: int = Field(86_400, ge=1)
    global_cap_channels: dict[Literal["webhook", "email", "kafka"], ChannelCap] = Field(
        default_factory=dict,
        description='A channel\'s own cap, e.g. {"email": {"max": 3, "period_seconds": 604800}}.',
    )
    default_timezone: str = Field("UTC", description="For quiet hours of customers without one.")

    # Clock control: POST /v1/clock moves this service's time forward (tests, demos).
    clock_control: bool = Field(False, description="Never in production.")

    # Journeys.
    journey_page_size: int = Field(500, ge=1, description="Runs advanced per transaction.")
    journey_poll_interval: float = Field(0.5, gt=0)

    # Segments.
    segment_size_interval_seconds: int = Field(
        3600, ge=60, description="How often each segment's size is sampled (size over time)."
    )
    segment_size_retention_days: int = Field(400, ge=1)

    # Dispatcher.
    dispatch_batch_size: int = Field(500, ge=1)
    dispatch_concurrency: int = Field(
        16, ge=1, description="Webhook and SMTP sends in flight at once per replica."
    )
    dispatch_poll_interval: float = Field(0.1, gt=0)
    dispatch_lease_seconds: float = Field(
        30.0, gt=0, description="A claimed action whose sender died is retried after this."
    )
    max_attempts: int = Field(8, ge=1)
    retry_base_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)

    # Webhooks.
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs a webhook may target even though they are loopback, private or "
        "link-local (SSRF guard), e.g. ['127.0.0.1/32'] for a local receiver.",
    )

    # Email (SMTP).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = Field(None, repr=False)
    smtp_start_tls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_seconds: float = Field(10.0, gt=0)
    email_from: str = "clm@localhost"
