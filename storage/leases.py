"""Which jobs the dispatcher and the poller may lease at a given time, as SQL conditions both backends share.

Their literals match the partial indexes jobs_to_dispatch and jobs_to_poll, so the planner can use them.
"""

from __future__ import annotations

from typing import Any

from storage.records import DispatchState, JobRecord, Stage


def due_for_dispatch(now: str) -> str:
    """Jobs whose upstream create is due at the time the placeholder `now` binds, and that no lease holds."""
    return (
        f"dispatch_state IN ('{DispatchState.PENDING}', '{DispatchState.SENDING}') "
        f"AND next_attempt_at <= {now} AND {_unleased(now)}"
    )


def due_for_poll(now: str) -> str:
    """Submitted, unfinished jobs whose status check is due at the time `now` binds, and that no lease holds."""
    return f"stage IN ({int(Stage.SUBMITTED)}, {int(Stage.PROCESSING)}) AND next_poll_at <= {now} AND {_unleased(now)}"


def _unleased(now: str) -> str:
    return f"(lease_until IS NULL OR lease_until <= {now})"


def as_claimed(job: JobRecord) -> tuple[Any, ...]:
    """What a batched poll reschedule requires unchanged since the claim, in the order both backends bind it: id,
    lease_until, provider_task_id, status, stage, next_poll_at, poll_attempts, updated_at."""
    return (
        job.id,
        job.lease_until,
        job.provider_task_id,
        job.status,
        job.stage,
        job.next_poll_at,
        job.poll_attempts,
        job.updated_at,
    )
