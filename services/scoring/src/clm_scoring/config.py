from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings
from clm_scoring.domain.scores import ModelKind
from clm_scoring.domain.summary import TimeUnit


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLM_SCORING_", extra="ignore", populate_by_name=True
    )

    port: int = 8003
    group_id: str = "clm-scoring"

    time_unit: TimeUnit = Field(TimeUnit.week, description="Unit of t_x, T and the model.")
    model: ModelKind = Field(
        ModelKind.bgnbd, description="Purchase model of full fits: bgnbd or pareto_nbd."
    )
    min_repeat_customers: int = Field(
        500,
        ge=1,
        description="Below this many repeat buyers the small-data (MAP) model is served.",
    )
    typical_gap_days: float = Field(
        90.0,
        gt=0,
        description="Typical days between a customer's purchases: the small-data prior's "
        "centre for the purchase rate.",
        # The name it had while it only fed the heuristic still works.
        validation_alias=AliasChoices(
            "CLM_SCORING_TYPICAL_GAP_DAYS", "CLM_SCORING_HEURISTIC_DEFAULT_GAP_DAYS"
        ),
    )
    horizon_months: int = Field(12, ge=1, le=120, description="CLV and expected-purchase horizon.")
    monthly_discount_rate: float = Field(0.01, ge=0, le=1, description="CLV discount per month.")
    publish_min_churn_change: float = Field(
        0.05, ge=0, le=1, description="Publish when churn probability moved this much."
    )
    publish_min_clv_change: float = Field(
        0.10, ge=0, description="Publish when CLV moved by this share of the last published one."
    )
    publish_min_clv_change_abs: float = Field(
        1.0, ge=0, description="... and by at least this much money."
    )
    refit_interval: float = Field(86_400.0, gt=0, description="Seconds between scheduled refits.")
    rescore_interval: float = Field(
        3_600.0, gt=0, description="Seconds between rescoring every customer (P(alive) decays)."
    )
    rfm_interval: float = Field(
        86_400.0, gt=0, description="Seconds between recomputing the RFM cut points."
    )
    rfm_moves_days: int = Field(
        400,
        ge=1,
        description="Days of RFM segment changes kept for GET /v1/rfm/moves (pruned with "
        "each scheduled recompute of the cut points).",
    )
    rescore_page_size: int = Field(
        2_000, ge=1, le=100_000, description="Customers per rescore transaction."
    )

    @field_validator("model")
    @classmethod
    def _fitted_kind(cls, value: ModelKind) -> ModelKind:
        if value is ModelKind.heuristic:
            raise ValueError("the heuristic is no longer served: choose bgnbd or pareto_nbd")
        return value
