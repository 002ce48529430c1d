"""Per-key token buckets, in this process (each ingest replica limits on its own)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` events per second per key, with bursts up to `burst`; rate 0 = no limit."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, events: int) -> int:
        """Spend `events` tokens of `key`; return 0 if allowed, else the seconds to wait
        before the same request can pass (for Retry-After). A refused request spends
        nothing."""
        if self._rate <= 0:
            return 0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        # A request larger than the burst could never pass; it passes on a full bucket.
        cost = min(float(events), self._burst)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0
        return max(1, math.ceil((cost - bucket.tokens) / self._rate))
