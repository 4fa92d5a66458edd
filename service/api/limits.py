"""Per-key limits: a request rate (token bucket) and a cap on open event streams. One process (SQLite) counts them
in memory; replicas sharing PostgreSQL count them in the database, so the limits hold for the whole deployment."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import NamedTuple, Protocol

import structlog

from storage import SharesLimits, StorageError, Store

log = structlog.get_logger("reelay.limits")


class StreamSlot(NamedTuple):
    """The place one open event stream holds among its key's `max_streams`."""

    api_key_id: str
    id: str


class KeyLimits(Protocol):
    """What the API asks before it serves a request or opens a stream."""

    rate: float
    max_streams: int

    async def take(self, api_key_id: str) -> float | None:
        """Spend one request of the key's rate: None if allowed, else the seconds until one is."""

    async def open_stream(self, api_key_id: str) -> StreamSlot | None:
        """A slot for a new stream of the key, or None when it already has `max_streams` open."""

    async def close_stream(self, slot: StreamSlot) -> None:
        """Give a stream's slot back (the stream has ended)."""

    async def keep(self) -> None:
        """Background upkeep for as long as the process serves streams (run as a loop; cancelled on stop)."""

    async def close(self) -> None:
        """Give back every slot still held (on stop)."""


class RateLimiter:
    """Allows `rate` requests per second per key on average, and bursts of up to `burst`, in this process."""

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


class ProcessLimits:
    """Both limits in this process's memory: right for one process (SQLite), per replica otherwise."""

    def __init__(self, rate: float, burst: int, max_streams: int, *, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.max_streams = max_streams
        self._bucket = RateLimiter(rate, burst, clock=clock)
        self._open: dict[str, int] = {}

    async def take(self, api_key_id: str) -> float | None:
        return self._bucket.take(api_key_id)

    async def open_stream(self, api_key_id: str) -> StreamSlot | None:
        held = self._open.get(api_key_id, 0)
        if held >= self.max_streams:
            return None
        self._open[api_key_id] = held + 1
        return StreamSlot(api_key_id, "")

    async def close_stream(self, slot: StreamSlot) -> None:
        left = self._open.pop(slot.api_key_id, 0) - 1
        if left > 0:
            self._open[slot.api_key_id] = left

    async def keep(self) -> None:
        return None

    async def close(self) -> None:
        self._open.clear()


class SharedLimits:
    """Both limits in the database every replica shares: one statement per request for the rate, and a slot row
    per open stream that this process renews every `ttl / 3` seconds, so a killed replica's slots lapse after
    `ttl`."""

    def __init__(self, store: SharesLimits, rate: float, burst: int, max_streams: int, *, ttl: float) -> None:
        self.rate = rate
        self.max_streams = max_streams
        self._store = store
        self._burst = burst
        self._ttl = ttl
        self._held: set[StreamSlot] = set()  # the slots this process renews

    async def take(self, api_key_id: str) -> float | None:
        if self.rate <= 0:
            return None
        return await self._store.take_request(api_key_id, rate=self.rate, burst=self._burst)

    async def open_stream(self, api_key_id: str) -> StreamSlot | None:
        slot = StreamSlot(api_key_id, secrets.token_hex(8))
        if not await self._store.open_stream_slot(api_key_id, slot.id, cap=self.max_streams, ttl=self._ttl):
            return None
        self._held.add(slot)
        return slot

    async def close_stream(self, slot: StreamSlot) -> None:
        self._held.discard(slot)  # first: if the release fails (or is cancelled), the slot lapses after the TTL
        try:
            await self._store.release_stream_slots([slot])
        except StorageError as exc:
            log.warning("limits.stream_slot_release_failed", api_key_id=slot.api_key_id, error=str(exc))

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._store.renew_stream_slots(list(self._held), ttl=self._ttl)
            except StorageError as exc:  # the next round tries again, before the slots lapse
                log.warning("limits.stream_slot_renewal_failed", slots=len(self._held), error=str(exc))

    async def close(self) -> None:
        held, self._held = list(self._held), set()
        try:
            await self._store.release_stream_slots(held)
        except StorageError as exc:
            log.warning("limits.stream_slot_release_failed", slots=len(held), error=str(exc))


def key_limits(
    store: Store, *, rate: float, burst: int, max_streams: int, ttl: float, clock: Callable[[], float]
) -> KeyLimits:
    """Shared limits on a store replicas share (PostgreSQL), else this process's own (SQLite)."""
    if isinstance(store, SharesLimits):
        return SharedLimits(store, rate, burst, max_streams, ttl=ttl)
    return ProcessLimits(rate, burst, max_streams, clock=clock)
