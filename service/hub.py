"""In-process fan-out of committed events to SSE subscribers, with a bounded queue per subscriber."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Sequence
from typing import Final

import msgspec

from storage import EventRecord

HEARTBEAT: Final = "heartbeat"
CLOSE: Final = "close"
OVERFLOW: Final = "overflow"
SHUTDOWN: Final = "shutdown"
REVOKED: Final = "revoked"

Item = tuple[int, str, bytes] | str
"""(event id, event type, encoded SSE frame), or one of the signals above."""


def event_data(event: EventRecord) -> bytes:
    """The event as callers see it: the SSE data line, and the `data` of every webhook delivery of it.

    An event with a detail object (job.rerouted's move, budget.threshold's figures) carries it as `detail`;
    a budget.threshold event's `job` is null.
    """
    if event.detail is not None:
        return b'{"id":%d,"type":"%s","created_at":"%s","job":%s,"detail":%s}' % (
            event.id,
            event.type.encode(),
            event.created_at.encode(),
            event.job,
            event.detail,
        )
    return b'{"id":%d,"type":"%s","created_at":"%s","job":%s}' % (
        event.id,
        event.type.encode(),
        event.created_at.encode(),
        event.job,
    )


class _JobMetadata(msgspec.Struct):
    metadata: dict[str, str] | None = None


_job_metadata = msgspec.json.Decoder(_JobMetadata | None).decode


def job_metadata(event: EventRecord) -> dict[str, str] | None:
    """The metadata of the event's job (None for an event without a job, such as budget.threshold)."""
    job = _job_metadata(event.job)
    return job.metadata if job is not None else None


def metadata_holds(found: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    """Whether `found` holds every pair of `wanted`, as `metadata.<key>=<value>` list filters do."""
    return found is not None and all(found.get(k) == v for k, v in wanted.items())


def event_matches(event: EventRecord, metadata: dict[str, str] | None) -> bool:
    """Whether a stream filtered on `metadata` (None: no filter) carries the event."""
    return metadata is None or metadata_holds(job_metadata(event), metadata)


def sse_frame(event: EventRecord) -> bytes:
    """The wire form of a logged event; built once per event and shared by every subscriber."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), event_data(event))


class Subscription:
    """One subscriber's queue. A full queue drops the subscriber rather than blocking the publisher."""

    __slots__ = ("_hub", "_items", "_limit", "_timer", "_waiter", "api_key_id", "closed", "job_id", "metadata")

    def __init__(
        self, hub: EventHub, api_key_id: str, job_id: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> None:
        self._hub = hub
        self.api_key_id = api_key_id
        self.job_id = job_id
        self.metadata = metadata  # only events of jobs with these metadata pairs (a stream token's filter)
        self._limit = limit
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def offer(self, item: tuple[int, str, bytes]) -> None:
        if self.closed:
            return
        if len(self._items) >= self._limit:
            self._end(OVERFLOW)
            return
        self._items.append(item)
        self._wake()

    def start_heartbeat(self, interval: float, rng: random.Random) -> None:
        """Ping every `interval` s, the first at a random offset so connections do not tick together."""
        loop = asyncio.get_running_loop()

        def beat() -> None:
            if self.closed:
                return
            if HEARTBEAT not in self._items:
                self._items.append(HEARTBEAT)
                self._wake()
            self._timer = loop.call_later(interval, beat)

        self._timer = loop.call_later(rng.uniform(0.1, 1.0) * interval, beat)

    async def next(self) -> Item:
        while not self._items:
            if self.closed:
                return CLOSE
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def close(self, signal: str = CLOSE) -> None:
        """Stop receiving and leave the hub; safe to call more than once, needs no await."""
        self._end(signal)

    def _end(self, signal: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._hub._remove(self)
        self._items.clear()
        self._items.append(signal)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class EventHub:
    """Routes each committed event to the subscriptions of its API key (and of its job)."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._by_key: dict[str, set[Subscription]] = {}
        self._by_job: dict[str, set[Subscription]] = {}
        self._per_key: dict[str, int] = {}  # open subscriptions of each API key, job streams included

    def subscribe(
        self, api_key_id: str, job_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> Subscription:
        sub = Subscription(self, api_key_id, job_id, self._queue_size, metadata)
        index, name = (self._by_key, api_key_id) if job_id is None else (self._by_job, job_id)
        index.setdefault(name, set()).add(sub)
        self._per_key[api_key_id] = self._per_key.get(api_key_id, 0) + 1
        return sub

    def count_for(self, api_key_id: str) -> int:
        return self._per_key.get(api_key_id, 0)

    def publish(self, events: Sequence[EventRecord]) -> None:
        """Store listener: called with committed events in id order; never blocks."""
        for event in events:
            by_key = self._by_key.get(event.api_key_id)
            by_job = self._by_job.get(event.job_id)
            if not by_key and not by_job:
                continue
            item = (event.id, event.type, sse_frame(event))
            found: dict[str, str] | None = None
            unread = True  # the job's metadata is decoded once, for the first subscriber that filters on it
            for sub in (*(by_key or ()), *(s for s in by_job or () if s.api_key_id == event.api_key_id)):
                if sub.metadata is not None:
                    if unread:
                        found, unread = job_metadata(event), False
                    if not metadata_holds(found, sub.metadata):
                        continue
                sub.offer(item)

    def stream_keys(self) -> list[str]:
        """The API keys that have at least one open subscription."""
        return list(self._per_key)

    def close_key(self, api_key_id: str, signal: str = REVOKED) -> None:
        """End every subscription of one API key, its job streams included."""
        for subs in (self._by_key.get(api_key_id, ()), *self._by_job.values()):
            for sub in [s for s in subs if s.api_key_id == api_key_id]:
                sub.close(signal)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_key.values()) + sum(len(s) for s in self._by_job.values())

    def close_all(self, signal: str = SHUTDOWN) -> None:
        """End every subscription (on shutdown: each stream tells its client to reconnect)."""
        for index in (self._by_key, self._by_job):
            for subs in list(index.values()):
                for sub in list(subs):
                    sub.close(signal)

    def _remove(self, sub: Subscription) -> None:
        index, name = (self._by_key, sub.api_key_id) if sub.job_id is None else (self._by_job, sub.job_id)
        subs = index.get(name)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del index[name]
            left = self._per_key[sub.api_key_id] - 1
            if left:
                self._per_key[sub.api_key_id] = left
            else:
                del self._per_key[sub.api_key_id]
