"""Per-key request rate limit: a token bucket per API key, in process memory."""

from __future__ import annotations

from collections.abc import Callable


class RateLimiter:
    """Allows `rate` requests per second per key on average, and bursts of up to `burst`.

    State is per process: with several replicas each enforces the limit on its own share of traffic.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float | None:
        """Spend one token; None if allowed, else the seconds until a token is available."""
        if self.rate <= 0:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate
