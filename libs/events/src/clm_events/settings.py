"""Settings every CLM service shares, read from `CLM_*` environment variables.

Each service adds its own settings class with its own prefix (e.g. `CLM_STAGE_ENGINE_`)
and embeds these, so `CLM_DATABASE_URL` points every service at the same server.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Services warn at start while this is in use: it is public, so the hashes it makes are
# only as secret as the ids themselves.
DEVELOPMENT_HASH_KEY = "clm-development-hash-key"


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
    privacy_hash_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_HASH_KEY),
        description="Secret of the keyed hash (HMAC-SHA256) under which erased ids are "
        "remembered; the same in every service, and kept secret: with it, anyone holding "
        "a candidate id could test it against the tombstones.",
    )
    privacy_tombstone_days: float = Field(
        90,
        gt=0,
        description="How long an erased id's events are dropped on arrival (in flight, "
        "replayed from a topic or the dead-letter store); longer than topic retention.",
    )
    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="JSON log lines (false: plain text for a terminal).")
