"""Configuration an operator sets through the environment, and topic naming."""

from __future__ import annotations

import pytest

from clm_events.db import is_retryable
from clm_events.topics import Topics
from clm_stage_engine.config import Settings as StageEngineSettings


def test_shared_and_service_settings_come_from_their_own_env_prefixes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLM_DATABASE_URL", "postgresql+asyncpg://clm@db.internal/clm")
    monkeypatch.setenv("CLM_TOPIC_PREFIX", "prod.clm.")
    monkeypatch.setenv("CLM_STAGE_ENGINE_PORT", "9002")
    monkeypatch.setenv("CLM_INGEST_PORT", "9001")  # another service's: ignored here
    settings = StageEngineSettings()
    assert settings.port == 9002
    assert settings.common.database_url == "postgresql+asyncpg://clm@db.internal/clm"
    assert settings.common.topic_prefix == "prod.clm."


def test_topics_carry_the_configured_prefix_and_route_by_type() -> None:
    topics = Topics(prefix="acme.", partitions=12)
    assert topics.domain("billing.payment_failed") == "acme.events.billing"
    assert topics.inbound == "acme.events.inbound"
    # The served score model keeps one partition: its versions stay in order.
    assert {n: p for n, p in topics.all().items() if p != 12} == {"acme.models": 1}
    assert len(topics.all()) == 11
    assert topics.privacy == "acme.privacy"
    with pytest.raises(ValueError, match=r"lifecycle\.stage_changed"):
        topics.domain("lifecycle.stage_changed")


def test_only_transient_failures_are_retried() -> None:
    assert is_retryable(ConnectionRefusedError())
    assert not is_retryable(ValueError("a bug, not an outage"))
