from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clm_events.service import ServiceSettings
from clm_scoring.domain.scores import ModelKind
from clm_scoring.domain.summary import TimeUnit


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_SCORING_", extra="ignore")

    port: int = 8003
    group_id: str = "clm-scoring"

    time_unit: TimeUnit = Field(TimeUnit.week, description="Unit of t_x, T and the model.")
    model: ModelKind = Field(
        ModelKind.bgnbd, description="Purchase model: bgnbd or pareto_nbd (heuristic: never fit)."
    )
    min_repeat_customers: int = Field(
        500, ge=1, description="Below this many repeat buyers scores use the heuristic."
    )
    heuristic_default_gap_days: float = Field(
        90.0, gt=0, description="Typical gap between purchases when nobody bought twice yet."
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
    rescore_page_size: int = Field(
        2_000, ge=1, le=100_000, description="Customers per rescore transaction."
    )
