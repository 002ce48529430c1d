"""Helpers of the whole-pipeline tests."""

from __future__ import annotations

from typing import Any

from kit import running


def stage_engine(database_url: str, bootstrap: str, prefix: str) -> Any:
    """The stage engine as the pipeline tests run it: a fast timer, and histories that
    settle in two seconds (these arrive within seconds, not over months)."""
    return running(
        "clm_stage_engine",
        database_url,
        bootstrap,
        topic_prefix=prefix,
        timer_interval=0.2,
        settle_seconds=2.0,
    )
