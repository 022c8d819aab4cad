"""Token buckets by key, for the unauthenticated device API.

A key (a source address, a device seen from a source) may make `per_min` requests a minute and
burst up to the same number at once: a bucket holds `per_min` tokens and refills `per_min / 60`
a second. A refused request learns how long until its next token (the answer's Retry-After).

The buckets live in the process (one set per API worker: with N workers the limits apply N
times over). Their number is bounded: past `max_keys`, buckets that have refilled (the same as
no bucket) are dropped, then the oldest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    __slots__ = ("_buckets", "_clock", "capacity", "max_keys", "per_s")

    def __init__(
        self,
        per_min: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_min)
        self.per_s = per_min / 60.0
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def take(self, key: str) -> int:
        """0 if `key` may go on (a token is spent), else whole seconds until it may retry."""
        if not self.enabled:
            return 0
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                self._prune(now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.per_s))

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.per_s >= self.capacity
        ]
        for k in full:
            del self._buckets[k]
        excess = len(self._buckets) - self.max_keys // 2
        if excess > 0:  # all busy: the oldest go (dicts keep insertion order)
            for k in list(self._buckets)[:excess]:
                del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)
