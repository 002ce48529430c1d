"""Settings every CLM service shares, read from `CLM_*` environment variables.

Each service adds its own settings class with its own prefix (e.g. `CLM_STAGE_ENGINE_`)
and embeds these, so `CLM_DATABASE_URL` points every service at the same server.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLM_", extra="ignore")

    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/clm",
        description="SQLAlchemy URL of PostgreSQL (asyncpg driver).",
    )
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap list.")
    topic_prefix: str = Field("clm.", description="Prefix of every topic name.")
    topic_partitions: int = Field(6, ge=1, description="Partitions of topics CLM creates.")
    topic_replication_factor: int = Field(1, ge=1, description="Replication of created topics.")
    kafka_idempotent_producer: bool = Field(
        False, description="Enable on real Kafka; the local Tansu broker does not support it."
    )
    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="JSON log lines (false: plain text for a terminal).")
