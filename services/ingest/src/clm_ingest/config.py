from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from clm_events.catalog import DERIVED_TYPES, EventType
from clm_events.service import ServiceSettings
from clm_ingest.domain.segment import DEFAULT_TRACK_EVENTS


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_INGEST_", extra="ignore")

    port: int = 8001
    group_id: str = "clm-ingest"
    # Segment's own limits, so its libraries never build a request we refuse for size.
    max_event_bytes: int = Field(32 * 1024, ge=1024, description="Largest event accepted.")
    max_request_bytes: int = Field(
        500 * 1024, ge=1024, description="Largest request body (after gzip is undone)."
    )
    rate_limit_events_per_second: float = Field(
        10_000, ge=0, description="Sustained events per second per key; 0 turns the limit off."
    )
    rate_limit_burst: int = Field(
        20_000, ge=1, description="Events a key may send at once before the rate applies."
    )
    publish_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for the broker's acks before answering 503."
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with a 503.")
    segment_track_events: dict[str, EventType] = Field(
        default_factory=lambda: dict(DEFAULT_TRACK_EVENTS),
        description="Segment track event name -> CLM event type (JSON in the env var).",
    )
    identity_max_anonymous_ids: int = Field(
        100, ge=1, description="Anonymous ids one known customer may absorb; more are refused."
    )
    identity_blocked_ids: list[str] = Field(
        default_factory=list,
        description="Ids never linked besides the built-in placeholders ('0', '-1', 'null', "
        "'anonymous', ...), e.g. the test ids of your own code (JSON list in the env var).",
    )

    stage_engine_url: str = Field(
        "http://127.0.0.1:8002", description="The stage engine's API (privacy exports)."
    )
    scoring_url: str = Field("http://127.0.0.1:8003", description="Scoring's API (exports).")
    campaigns_url: str = Field(
        "http://127.0.0.1:8004",
        description="Campaigns' API: exports, and resolving an email to the customers "
        "carrying it for an erasure.",
    )
    privacy_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for each service during an export."
    )

    @property
    def privacy_urls(self) -> dict[str, str]:
        """The other services an export asks, by the name they report completion under."""
        return {
            "stage-engine": self.stage_engine_url,
            "scoring": self.scoring_url,
            "campaigns": self.campaigns_url,
        }

    @field_validator("segment_track_events")
    @classmethod
    def _producer_types_only(cls, value: dict[str, EventType]) -> dict[str, EventType]:
        derived = sorted(name for name, t in value.items() if t in DERIVED_TYPES)
        if derived:
            raise ValueError(f"{derived} map to derived types, which CLM publishes itself")
        return value
