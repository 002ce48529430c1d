"""The BTYD summary of one customer's purchases: repeat purchases x, time of the last
purchase t_x, age T and mean repeat spend, in a chosen time unit.

Event time is the clock and a calendar day is the grain: purchases on the same day count
as one transaction (the convention of the published CDNOW analyses), so t_x and T are
whole days expressed in the unit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum


class TimeUnit(StrEnum):
    day = "day"
    week = "week"

    @property
    def days(self) -> float:
        return 1.0 if self is TimeUnit.day else 7.0

    @property
    def per_month(self) -> float:
        """Units in an average calendar month (365.25 / 12 days)."""
        return 365.25 / 12 / self.days


@dataclass(frozen=True)
class Order:
    """One order as scoring sees it: its day and its spend net of refunds."""

    day: date
    amount: Decimal
    refunded: Decimal = Decimal(0)

    @property
    def counts(self) -> bool:
        """A fully refunded order never happened as far as buying behaviour goes."""
        return not (self.refunded > 0 and self.refunded >= self.amount)

    @property
    def net(self) -> Decimal:
        return max(Decimal(0), self.amount - self.refunded)


@dataclass(frozen=True)
class PurchaseHistory:
    """What scoring keeps per customer: enough to rebuild x, t_x, T and spend at any date."""

    first_day: date
    last_day: date
    purchase_days: int  # distinct days with a purchase that counts
    first_spend: Decimal  # spend on the first day
    repeat_spend: Decimal  # spend on every later day

    @property
    def repeat_purchases(self) -> int:
        return self.purchase_days - 1

    @property
    def mean_repeat_spend(self) -> float:
        x = self.repeat_purchases
        return float(self.repeat_spend / x) if x > 0 else 0.0

    @property
    def mean_spend(self) -> float:
        return float((self.first_spend + self.repeat_spend) / self.purchase_days)


@dataclass(frozen=True)
class Summary:
    """x, t_x, T (in the unit) and mean repeat spend, as the models take them."""

    x: int
    t_x: float
    T: float
    mean_repeat_spend: float
    mean_spend: float


def history(orders: Iterable[Order]) -> PurchaseHistory | None:
    """Fold a customer's orders into days; None if no purchase counts (all refunded)."""
    by_day: dict[date, Decimal] = {}
    for o in orders:
        if o.counts:
            by_day[o.day] = by_day.get(o.day, Decimal(0)) + o.net
    if not by_day:
        return None
    days = sorted(by_day)
    first = days[0]
    return PurchaseHistory(
        first_day=first,
        last_day=days[-1],
        purchase_days=len(days),
        first_spend=by_day[first],
        repeat_spend=sum((by_day[d] for d in days[1:]), Decimal(0)),
    )


def summarize(h: PurchaseHistory, as_of: date, unit: TimeUnit) -> Summary:
    """The summary at `as_of` (a purchase dated later than `as_of` counts as `as_of`)."""
    end = max(as_of, h.last_day)
    return Summary(
        x=h.repeat_purchases,
        t_x=(h.last_day - h.first_day).days / unit.days,
        T=(end - h.first_day).days / unit.days,
        mean_repeat_spend=h.mean_repeat_spend,
        mean_spend=h.mean_spend,
    )


@dataclass(frozen=True)
class Split:
    """A calibration summary and the repeat purchases the customer made in the holdout."""

    calibration: Summary
    holdout_purchases: int


def split(
    days: Iterable[tuple[date, Decimal]],
    *,
    calibration_end: date,
    holdout_end: date | None,
    unit: TimeUnit,
) -> Split | None:
    """Calibration/holdout split as in the literature: customers are those whose first
    purchase is on or before `calibration_end`; holdout purchases are days in
    (calibration_end, holdout_end]. None for a customer first seen after calibration."""
    by_day: dict[date, Decimal] = {}
    for d, amount in days:
        by_day[d] = by_day.get(d, Decimal(0)) + amount
    calibration = [d for d in by_day if d <= calibration_end]
    if not calibration:
        return None
    h = history(Order(d, by_day[d]) for d in calibration)
    if h is None:
        return None
    holdout = 0
    if holdout_end is not None:
        holdout = sum(1 for d in by_day if calibration_end < d <= holdout_end)
    return Split(summarize(h, calibration_end, unit), holdout)
