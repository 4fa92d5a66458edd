"""The job event log as stream subscribers read it: the newest event id, then bounded pages after a cursor."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.runtime import Runtime
    from storage import EventRecord


class EventLog:
    """The replay half of an event stream; live events come from the hub."""

    def __init__(self, runtime: Runtime) -> None:
        self._store = runtime.store

    async def newest_id(self) -> int:
        """The id of the newest committed event (0 when there is none)."""
        return await self._store.last_event_id()

    async def page_after(
        self, after: int, *, api_key_id: str, job_id: str | None, limit: int, max_bytes: int
    ) -> list[EventRecord]:
        """The caller's events after `after`, oldest first: at most `limit`, and `max_bytes` of job snapshots but at
        least one."""
        return await self._store.events_after(
            after, api_key_id=api_key_id, job_id=job_id, limit=limit, max_bytes=max_bytes
        )
