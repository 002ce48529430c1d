"""The CDNOW sample as shipped in the lifetimes wheel (data files only; never imported)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path


def datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "the lifetimes wheel is needed"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def published_summary() -> list[dict[str, float]]:
    """The published 2,357-customer summary (x, t_x, T in weeks, zbar), by sample id."""
    with (datasets() / "cdnow_customers_summary_with_transactions.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
