"""RFM: recency, frequency and monetary quintiles over the customer base, the three-digit
cell and the named segment (docs/scoring.md, "RFM").

Recency is days since the last purchase as of the scoring date, frequency the number of
days with a purchase, monetary the total spend net of refunds. Cut points are numpy's
quantiles at 0.2, 0.4, 0.6 and 0.8 (linear interpolation); a value equal to a cut point
falls in the quintile below it, on the raw scale (fewer days, fewer purchase days, less
money). Recency's quintile is then reversed, so that 5 is the most recent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Cuts:
    """The four cut points of each measure, ascending on its raw scale."""

    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]


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
