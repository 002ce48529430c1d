"""`clm-scoring fit`: the analyst's command on the CDNOW file and on a CSV."""

from __future__ import annotations

import json
from pathlib import Path

from scoring_cdnow_data import datasets
from typer.testing import CliRunner

from clm_scoring.cli import app

runner = CliRunner()


def squeezed(output: str) -> str:
    """The error text without the box drawing and line wrapping of the terminal."""
    return "".join(output.replace("│", "").split())


def test_fit_on_cdnow_prints_parameters_and_holdout_comparison() -> None:
    result = runner.invoke(
        app,
        [
            "fit",
            "--transactions",
            str(datasets() / "CDNOW_sample.txt"),
            "--calibration-end",
            "1997-09-30",
            "--holdout-end",
            "1998-06-30",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["customers"] == 2357 and out["model"] == "bgnbd"
    assert round(out["params"]["r"], 3) == 0.243
    assert round(out["log_likelihood"], 1) == -9582.4
    assert round(out["spend_model"]["params"]["p"], 2) == 6.25
    assert out["holdout"]["actual_repeat_purchases"] == 1882


def test_fit_reads_a_csv_in_days(tmp_path: Path) -> None:
    rows = ["customer_id,date,amount"]
    for c in range(40):
        for k in range(1 + c % 4):
            rows.append(f"c{c},2026-0{1 + k}-{10 + c % 9},{10 + c}.50")
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(rows) + "\n")
    result = runner.invoke(
        app, ["fit", "--transactions", str(path), "--time-unit", "day", "--model", "pareto_nbd"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["time_unit"] == "day" and out["customers"] == 40
    assert set(out["params"]) == {"r", "alpha", "s", "beta"}


def test_a_bad_file_is_refused_with_the_line_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("customer_id,date,amount\nc1,2026-13-01,5\n")
    result = runner.invoke(app, ["fit", "--transactions", str(path)])
    assert result.exit_code == 2
    assert "bad.csv:2:date'2026-13-01'isnotYYYY-MM-DD" in squeezed(result.output)
    missing = runner.invoke(app, ["fit", "--transactions", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "Nosuchfile" in squeezed(missing.output)
