"""Draws the holdout figure of docs/scoring-validation.md and prints its tables.

    python services/scoring/docs_figures.py docs/scoring-holdout.png

Run by hand (matplotlib is a dev dependency, never used by the service). Data: the CDNOW
sample shipped in the lifetimes wheel's datasets folder (read as a file, not imported).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from clm_scoring import transactions_file
from clm_scoring.domain.analysis import calibrate, fit_and_compare
from clm_scoring.domain.scores import ModelKind
from clm_scoring.domain.summary import TimeUnit


def main(out: Path) -> None:
    spec = importlib.util.find_spec("lifetimes")
    assert spec and spec.submodule_search_locations, "needs the lifetimes wheel's data files"
    sample = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_sample.txt"
    end, holdout_end = date(1997, 9, 30), date(1998, 6, 30)
    cal = calibrate(
        transactions_file.read(sample),
        calibration_end=end,
        holdout_end=holdout_end,
        unit=TimeUnit.week,
    )
    results = {
        kind.value: fit_and_compare(
            cal, kind=kind, unit=TimeUnit.week, calibration_end=end, holdout_end=holdout_end
        )
        for kind in (ModelKind.bgnbd, ModelKind.pareto_nbd)
    }
    print(json.dumps(results, indent=2))

    groups = results["bgnbd"]["holdout"]["by_calibration_frequency"]
    labels = [g["calibration_repeat_purchases"] for g in groups]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(labels, [g["actual_mean"] for g in groups], "o-", color="black", label="actual")
    ax.plot(labels, [g["predicted_mean"] for g in groups], "s--", label="BG/NBD")
    pareto = results["pareto_nbd"]["holdout"]["by_calibration_frequency"]
    ax.plot(labels, [g["predicted_mean"] for g in pareto], "^:", label="Pareto/NBD")
    ax.set_xlabel("repeat purchases in weeks 1-39 (calibration)")
    ax.set_ylabel("mean repeat purchases in weeks 40-78")
    ax.set_title("CDNOW sample: conditional expectations vs holdout actuals")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/scoring-holdout.png"))
