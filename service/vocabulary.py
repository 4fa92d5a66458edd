"""The job statuses and event types callers see, and which of them are final: the one place they are spelled."""

from __future__ import annotations

from typing import Final, Literal, get_args

Status = Literal["queued", "processing", "succeeded", "failed", "cancelled"]
STATUSES: Final[tuple[Status, ...]] = get_args(Status)
TERMINAL: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})

EventType = Literal["job.created", "job.submitted", "job.processing", "job.succeeded", "job.failed", "job.cancelled"]
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
# A job's stream ends with the event of its terminal status.
TERMINAL_EVENTS: Final[frozenset[str]] = frozenset(f"job.{status}" for status in TERMINAL)
