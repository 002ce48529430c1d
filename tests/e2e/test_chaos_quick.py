"""The short chaos run: every service SIGKILLed once while a population is replayed,
compared with an undisturbed run of the same events (`make chaos` is the long one).
Both runs go on at once, each on its own stack; about a minute on two cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[2] / "system" / "chaos.py"


@pytest.mark.timeout(300)
def test_a_crash_of_each_service_loses_and_duplicates_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(CHAOS), "--quick"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "RESULT: identical" in result.stdout, report
    assert result.stdout.count(" kill ") == 4, report
