"""Per-client token buckets with a bounded number of tracked clients."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """One token bucket per client key: ``burst`` requests at once, ``rate_per_s`` sustained.

    Args:
        rate_per_s: tokens added per second; 0 disables limiting (every request is allowed).
        burst: bucket size (requests a fresh client may send back to back).
        max_clients: buckets kept; the least recently seen client is forgotten beyond that
            (it then starts again with a full bucket).
        clock: monotonic time source in seconds (injectable for tests).

    Raises:
        ValueError: for a negative rate, a burst below 1 or max_clients below 1.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s < 0:
            raise ValueError(f"rate_per_s must be >= 0, not {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, not {max_clients}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t_s)

    @property
    def enabled(self) -> bool:
        """False when the rate is 0 (no limit)."""
        return self.rate_per_s > 0

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; False if it is empty (the request is refused)."""
        if not self.enabled:
            return True
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after_s(self, key: str) -> float:
        """Seconds until ``key`` has a whole token again (0 if it has one now)."""
        if not self.enabled or key not in self._buckets:
            return 0.0
        tokens, last = self._buckets[key]
        tokens = min(self.burst, tokens + max(0.0, self._clock() - last) * self.rate_per_s)
        return max(0.0, (1.0 - tokens) / self.rate_per_s)

    def __len__(self) -> int:
        return len(self._buckets)
