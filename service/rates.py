"""Per-provider rate budgets (REELAY_<PROVIDER>_RATE_LIMIT): requests per second to a provider, creates and status
checks together, shared by every replica on PostgreSQL (a token bucket row per provider) and kept in memory on
SQLite (one process).

A limit of N/s becomes a bucket of `burst` tokens refilled at `rate` per second, with `burst - 1 + 1.1 * rate <= N`:
a request may reach the provider up to 100 ms after its token was taken, and still no one-second window at the
provider sees more than N. Creates go first: status checks leave one token in reserve (when the bucket holds two),
and take none while a create waits for one. A 429 with Retry-After pauses the whole bucket for that long.

Polls are spaced to fit: a job's next status check is at least (jobs in flight at the provider) / `rate` away, so
every job gets its turn and none waits behind the others' backoff caps (`RateBudgets.poll_spacing`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping

import structlog

from storage import StorageError, Store
from storage.base import SharesLimits

log = structlog.get_logger("reelay.rates")

LATE_MARGIN = 1.1  # a one-second window at the provider may hold the tokens of 1.1 s of takes
IN_FLIGHT_SECONDS = 5.0  # a count of the jobs in flight serves this long before it is read again


class Shape:
    """The bucket a limit of `limit` requests per second becomes."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.burst = 1.0 if limit < 2 else max(2.0, math.floor(limit / 10))
        self.rate = (limit - self.burst + 1) / LATE_MARGIN
        self.reserve = 1.0 if self.burst >= 2 else 0.0  # status checks leave this for a create
        self.hold = 2 / self.rate + 0.1  # after a create found no token, status checks wait this long


class _Bucket:
    """One provider's bucket in this process (SQLite): the same rules as the shared row in PostgreSQL."""

    def __init__(self, shape: Shape, now: float) -> None:
        self.shape = shape
        self.tokens = shape.burst
        self.at = now
        self.paused_until = float("-inf")
        self.creates_until = float("-inf")

    def take(self, want: int, reserve: float, create: bool, now: float) -> tuple[int, float, float]:
        self.tokens = min(self.shape.burst, self.tokens + max(0.0, now - self.at) * self.shape.rate)
        self.at = now
        granted = 0
        if now >= self.paused_until and (create or now >= self.creates_until):
            granted = max(0, min(want, math.floor(self.tokens - reserve)))
        self.tokens -= granted
        if create and granted == 0:
            self.creates_until = now + self.shape.hold
        return granted, self.tokens, max(0.0, self.paused_until - now)


class RateBudgets:
    """The budgets of the providers that have one; a provider without a limit is never asked about."""

    def __init__(
        self, limits: Mapping[str, float | None], store: Store, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.shapes = {provider: Shape(limit) for provider, limit in limits.items() if limit}
        self._store = store
        self._shared = store if isinstance(store, SharesLimits) else None
        self._monotonic = monotonic
        self._local: dict[str, _Bucket] = {}
        self._in_flight: Mapping[str, int] = {}
        self._counted_until = float("-inf")
        self._counting = asyncio.Lock()

    def limit(self, provider: str) -> float | None:
        shape = self.shapes.get(provider)
        return None if shape is None else shape.limit

    def spacing(self, provider: str, in_flight: int) -> float:
        """The fewest seconds between two status checks of one job that let `in_flight` jobs each have their turn
        within the budget's steady rate (0 without a budget)."""
        shape = self.shapes.get(provider)
        return 0.0 if shape is None else in_flight / shape.rate

    async def poll_spacing(self, provider: str) -> float:
        """`spacing` for the provider's jobs in flight now, counted at most every IN_FLIGHT_SECONDS in this process."""
        if provider not in self.shapes:
            return 0.0
        if self._monotonic() >= self._counted_until:
            async with self._counting:  # one count for every poll that finds it stale at once
                if self._monotonic() >= self._counted_until:
                    try:
                        self._in_flight = await self._store.jobs_in_flight()
                    except StorageError as exc:  # the last count serves until the next try
                        log.error("rates.count_failed", error=str(exc))
                    self._counted_until = self._monotonic() + IN_FLIGHT_SECONDS
        return self.spacing(provider, self._in_flight.get(provider, 0))

    async def take(self, provider: str, want: int, *, create: bool) -> tuple[int, float]:
        """Take up to `want` tokens (a create wants one); returns (granted, seconds until it is worth asking
        again). A provider without a budget grants everything."""
        shape = self.shapes.get(provider)
        if shape is None:
            return want, 0.0
        reserve = 0.0 if create else shape.reserve
        try:
            if self._shared is not None:
                granted, tokens, paused = await self._shared.take_provider_tokens(
                    provider,
                    want=want,
                    rate=shape.rate,
                    burst=shape.burst,
                    reserve=reserve,
                    create=create,
                    hold=shape.hold,
                )
            else:
                granted, tokens, paused = self._bucket(provider, shape).take(want, reserve, create, self._monotonic())
        except StorageError as exc:  # no token without the shared count: the next ask tries again
            log.error("rates.take_failed", provider=provider, error=str(exc))
            return 0, 1.0
        if granted:
            return granted, 0.0
        # Asked again once a useful batch has refilled (one token for a create), or when the pause ends.
        batch = 1 if create else max(1, min(want, math.floor(shape.burst - reserve)))
        return 0, max(paused, (reserve + batch - tokens) / shape.rate, 0.01)

    async def refund(self, provider: str, count: int) -> None:
        """Give back tokens taken and not spent: nothing was sent with them."""
        shape = self.shapes.get(provider)
        if shape is None or count <= 0:
            return
        if self._shared is not None:
            await self._shared.refund_provider_tokens(provider, count, burst=shape.burst)
        else:
            bucket = self._bucket(provider, shape)
            bucket.tokens = min(shape.burst, bucket.tokens + count)

    async def pause(self, provider: str, seconds: float) -> None:
        """The provider answered 429 asking for `seconds`: no one sends it anything until then."""
        shape = self.shapes.get(provider)
        if shape is None or seconds <= 0:
            return
        log.warning("rates.paused", provider=provider, seconds=round(seconds, 2))
        try:
            if self._shared is not None:
                await self._shared.pause_provider(provider, seconds)
            else:
                bucket = self._bucket(provider, shape)
                now = self._monotonic()
                bucket.tokens, bucket.at = 0.0, now
                bucket.paused_until = max(bucket.paused_until, now + seconds)
        except StorageError as exc:
            log.error("rates.pause_failed", provider=provider, error=str(exc))

    def _bucket(self, provider: str, shape: Shape) -> _Bucket:
        bucket = self._local.get(provider)
        if bucket is None:
            bucket = self._local[provider] = _Bucket(shape, self._monotonic())
        return bucket
