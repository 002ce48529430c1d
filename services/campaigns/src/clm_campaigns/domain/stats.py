"""Per-trigger stats from action counts: what fired, what arrived, what converted."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Group:
    actions: int
    converted: int

    @property
    def rate(self) -> float | None:
        return self.converted / self.actions if self.actions else None


def summarize(
    by_status: Mapping[str, int],
    suppressed: Mapping[str, int],
    deferred: Mapping[str, int],
    treated: Group,
    holdout: Group,
) -> dict[str, Any]:
    """`matched` = fired + suppressed + held out; `fired` = delivered + failed + in flight.
    Uplift compares the conversion rate of delivered actions with the holdout's."""
    held_out = by_status.get("held_out", 0)
    suppressed_total = by_status.get("suppressed", 0)
    delivered, failed = by_status.get("delivered", 0), by_status.get("failed", 0)
    in_flight = by_status.get("pending", 0) + by_status.get("sending", 0)
    fired = delivered + failed + in_flight
    rt, rh = treated.rate, holdout.rate
    uplift: dict[str, float | None] = {"absolute": None, "relative": None}
    if rt is not None and rh is not None:
        uplift["absolute"] = rt - rh
        uplift["relative"] = (rt - rh) / rh if rh else None
    return {
        "matched": fired + suppressed_total + held_out,
        "fired": fired,
        "delivered": delivered,
        "failed": failed,
        "in_flight": in_flight,
        "suppressed": {"total": suppressed_total, "by_reason": dict(suppressed)},
        "held_out": held_out,
        "deferred": dict(deferred),
        "conversions": {
            "treated": {
                "actions": treated.actions,
                "converted": treated.converted,
                "rate": rt,
            },
            "holdout": {
                "actions": holdout.actions,
                "converted": holdout.converted,
                "rate": rh,
            },
        },
        "uplift": uplift,
    }


def two_proportions(a: Group, b: Group) -> dict[str, float | None]:
    """Arm `a` against arm `b`: the difference of conversion rates, its 95% interval
    (unpooled standard error) and the two-sided p-value of the pooled two-proportion
    z-test. None where a group is empty or nobody (or everybody) converted."""
    from scipy.stats import norm  # imported on use: the service starts without it

    ra, rb = a.rate, b.rate
    if ra is None or rb is None:
        return {"difference": None, "ci95_low": None, "ci95_high": None, "p_value": None}
    diff = ra - rb
    se = math.sqrt(ra * (1 - ra) / a.actions + rb * (1 - rb) / b.actions)
    pooled = (a.converted + b.converted) / (a.actions + b.actions)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / a.actions + 1 / b.actions))
    p_value = float(2 * norm.sf(abs(diff) / se0)) if se0 > 0 else None
    z = float(norm.ppf(0.975))
    return {
        "difference": diff,
        "ci95_low": diff - z * se,
        "ci95_high": diff + z * se,
        "p_value": p_value,
    }
