"""Suppression and scheduling: may this customer get this action, and when.

Order matters and is fixed: cooldown, frequency cap, global cap (each suppresses with its
reason; the global cap counts one channel's marketing messages over every trigger and
journey, and never stops a transactional one), then the holdout split (eligible
customers only, so treated and holdout groups are comparable), then the schedule (delay,
quiet hours: held until later, never dropped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clm_campaigns.domain.triggers import QuietHours, TriggerDefinition

Status = Literal["pending", "suppressed", "held_out"]
SUPPRESSION_REASONS = ("cooldown", "frequency_cap", "global_cap")
DEFERRAL_REASONS = ("delay", "quiet_hours")


@dataclass(frozen=True)
class PastContact:
    """An action already sent or on its way to the customer (suppressed ones do not count)."""

    trigger_id: str
    at: datetime
    channel: str = "webhook"
    transactional: bool = False


@dataclass(frozen=True)
class GlobalCap:
    """At most `max` marketing messages per customer and channel within `period`, unless
    `channels` sets that channel's own (max, period)."""

    max: int
    period: timedelta
    channels: Mapping[str, tuple[int, timedelta]] = field(default_factory=dict)

    def of(self, channel: str) -> tuple[int, timedelta]:
        return self.channels.get(channel, (self.max, self.period))

    @property
    def longest(self) -> timedelta:
        return max([self.period, *(p for _, p in self.channels.values())])


@dataclass(frozen=True)
class Decision:
    status: Status
    due_at: datetime
    suppressed_reason: str | None = None
    deferred_reason: str | None = None


def holdout_bucket(trigger_id: str, customer_id: str) -> float:
    """A stable number in [0, 100) per (trigger, customer): the same customer is always in
    or out of a trigger's holdout, on every replica and after every restart."""
    digest = hashlib.sha256(f"{trigger_id}\x00{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def decide(
    *,
    trigger_id: str,
    definition: TriggerDefinition,
    customer_id: str,
    contacts: Sequence[PastContact],
    now: datetime,
    timezone: str | None,
    global_cap: GlobalCap,
    default_timezone: str = "UTC",
) -> Decision:
    mine = [c.at for c in contacts if c.trigger_id == trigger_id]
    if definition.cooldown_seconds and any(
        now - at < timedelta(seconds=definition.cooldown_seconds) for at in mine
    ):
        return Decision("suppressed", now, suppressed_reason="cooldown")
    cap = definition.frequency_cap
    if cap is not None:
        window = timedelta(seconds=cap.period_seconds)
        if sum(1 for at in mine if now - at < window) >= cap.max:
            return Decision("suppressed", now, suppressed_reason="frequency_cap")
    channel = definition.action.channel
    most, period = global_cap.of(channel)
    marketing = sum(
        1 for c in contacts if c.channel == channel and not c.transactional and now - c.at < period
    )
    if not definition.transactional and marketing >= most:
        return Decision("suppressed", now, suppressed_reason="global_cap")
    if definition.holdout_percent and (
        holdout_bucket(trigger_id, customer_id) < definition.holdout_percent
    ):
        return Decision("held_out", now, suppressed_reason="holdout")

    due, deferred = now, None
    if definition.delay_seconds:
        due, deferred = now + timedelta(seconds=definition.delay_seconds), "delay"
    if definition.quiet_hours is not None:
        after = quiet_hours_end(definition.quiet_hours, due, zone(timezone, default_timezone))
        if after is not None:
            due, deferred = after, "quiet_hours"
    return Decision("pending", due, deferred_reason=deferred)


def zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def quiet_hours_end(quiet: QuietHours, at: datetime, tz: ZoneInfo) -> datetime | None:
    """If `at` falls in the customer's local quiet window, the instant it ends; else None."""
    local = at.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    start, end = quiet.start.replace(tzinfo=None), quiet.end.replace(tzinfo=None)
    if start < end:
        inside = start <= t < end
        end_day = local.date()
    else:  # the window spans midnight, e.g. 21:00-08:00
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(at.tzinfo)


def retry_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before retry number `attempt` (1 = first retry): exponential, capped, with
    `jitter` in [0, 1) spreading retries over the upper half so receivers that failed
    together are not hit again together."""
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return ceiling * (0.5 + jitter / 2)
