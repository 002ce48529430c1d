"""RFM: recency, frequency and monetary quintiles under cut points over the customer base,
the three-digit cell and the named segment (docs/scoring.md, "RFM").

Scoring computes the cut points over everyone and announces them with the served model
(clm_events.scoremodel.ServedModel.rfm); scoring scores its base and the stage engine one
customer at a moment of their history with the same functions, from the same measures:
recency is whole days from the last purchase day to the day scored, frequency the number
of days with a purchase that counts, monetary the total spend net of refunds (a fully
refunded order does not count).

Cut points are numpy's quantiles at 0.2, 0.4, 0.6 and 0.8 (linear interpolation); a value
equal to a cut point falls in the quintile below it, on the raw scale (fewer days, fewer
purchase days, less money). Recency's quintile is then reversed, so that 5 is the most
recent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

QUANTILES = (0.2, 0.4, 0.6, 0.8)

# Segment by R (rows, 5 first) and F (columns 1..5): the widely used R x F map, with its
# coldest corner (R 1, F 1-2) named Lost.
SEGMENT_MAP: dict[int, tuple[str, str, str, str, str]] = {
    5: ("New", "Potential loyalist", "Potential loyalist", "Champions", "Champions"),
    4: ("Promising", "Potential loyalist", "Potential loyalist", "Loyal", "Loyal"),
    3: ("About to sleep", "About to sleep", "Need attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At risk", "At risk", "Can't lose"),
    1: ("Lost", "Lost", "At risk", "At risk", "Can't lose"),
}

# The RFM facts a lifecycle rule may read (name -> CEL type, meaning; "?": may be null),
# evaluated as of the moment under the announced cut points.
RFM_FACTS: dict[str, tuple[str, str]] = {
    "rfm_recency": ("int?", "RFM recency quintile 1-5 (5: most recent) under the served cuts"),
    "rfm_frequency": ("int?", "RFM frequency quintile 1-5 (5: most purchase days)"),
    "rfm_monetary": ("int?", "RFM monetary quintile 1-5 (5: most spend, net of refunds)"),
    "rfm_cell": ("string?", 'the R, F and M digits, e.g. "545"'),
    "rfm_segment": ("string?", 'the named R x F segment, e.g. "Champions"'),
}


@dataclass(frozen=True)
class Cuts:
    """The four cut points of each measure, ascending on its raw scale; `version` is
    scoring's cut-point version (None: not stored yet)."""

    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "recency": list(self.recency),
            "frequency": list(self.frequency),
            "monetary": list(self.monetary),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Cuts:
        version = raw.get("version")
        return cls(
            tuple(float(v) for v in raw["recency"]),
            tuple(float(v) for v in raw["frequency"]),
            tuple(float(v) for v in raw["monetary"]),
            None if version is None else int(version),
        )

    def same_points(self, other: Cuts | None) -> bool:
        """Whether `other` puts every customer in the same quintiles (its version aside)."""
        return other is not None and (self.recency, self.frequency, self.monetary) == (
            other.recency,
            other.frequency,
            other.monetary,
        )


@dataclass(frozen=True)
class Rfm:
    recency: int
    frequency: int
    monetary: int

    @property
    def cell(self) -> str:
        return f"{self.recency}{self.frequency}{self.monetary}"

    @property
    def segment(self) -> str:
        return segment(self.recency, self.frequency)


def cut_points(values: ArrayLike) -> tuple[float, ...]:
    return tuple(float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), QUANTILES))


def cuts_of(recency_days: ArrayLike, frequency: ArrayLike, monetary: ArrayLike) -> Cuts:
    """The cut points of a non-empty base."""
    return Cuts(cut_points(recency_days), cut_points(frequency), cut_points(monetary))


def quintile(value: float, cuts: Sequence[float]) -> int:
    """1-5 on the raw scale: 1 + the number of cut points strictly below the value."""
    return 1 + sum(1 for c in cuts if c < value)


def score(cuts: Cuts, recency_days: float, frequency: float, monetary: float) -> Rfm:
    return Rfm(
        6 - quintile(recency_days, cuts.recency),
        quintile(frequency, cuts.frequency),
        quintile(monetary, cuts.monetary),
    )


def segment(recency: int, frequency: int) -> str:
    return SEGMENT_MAP[recency][frequency - 1]
