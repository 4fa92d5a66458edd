"""The job statuses and event types callers see, and which of them are final: the one place they are spelled."""

from __future__ import annotations

from typing import Final, Literal, get_args

Status = Literal["queued", "processing", "succeeded", "failed", "cancelled"]
STATUSES: Final[tuple[Status, ...]] = get_args(Status)
TERMINAL: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})

EventType = Literal[
    "job.created",
    "job.submitted",
    "job.processing",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.rerouted",  # a route moved the job to its next candidate (detail: from, to, reason)
    "job.archived",  # a succeeded job's outputs were copied into the asset store (or failed for good): not terminal
    "budget.threshold",  # a key's budget crossed 80 % or 100 % (no job; detail: the budget's figures)
]
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
# A job's stream ends with the event of its terminal status.
TERMINAL_EVENTS: Final[frozenset[str]] = frozenset(f"job.{status}" for status in TERMINAL)
