"""The job state machine: pure functions that decide every change to a job (the clock is passed in).

A job's stage only moves forward (queued → submitted → processing → terminal) and a terminal
status is final; each accepted change names the event that the store logs in the same transaction.
One exception: a job on a route with `retry_failed` whose provider failed it after accepting it goes back to
QUEUED for its next candidate (`retried`). Its public `status` still never moves backwards (`_later`), and
callbacks or status answers about the task it left never change it again (the callers check the task id).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from service.timestamps import to_iso
from service.vocabulary import Status
from storage import DispatchState, JobRecord, Stage

if TYPE_CHECKING:
    from service.providers.base import ModelSpec

_STAGE_OF: dict[str, Stage] = {
    "queued": Stage.SUBMITTED,
    "processing": Stage.PROCESSING,
    "succeeded": Stage.TERMINAL,
    "failed": Stage.TERMINAL,
    "cancelled": Stage.TERMINAL,
}
_RANK: dict[str, int] = {"queued": 0, "processing": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider said about a task, already normalized (from polling or a verified webhook)."""

    status: Status
    provider_task_id: str | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None


def new_job(
    *,
    job_id: str,
    api_key_id: str,
    model: str,
    provider: str,
    input: dict[str, Any],
    metadata: dict[str, str],
    cost: dict[str, Any],
    callback_token: str,
    now: float,
    timeout: float,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
    routed_model: str | None = None,
    reservation: dict[str, Any] | None = None,
) -> JobRecord:
    """A queued job; `model` is what the caller asked for, `routed_model` the model id it goes to first (on a
    route, its first candidate; else `model`)."""
    stamp = to_iso(now)
    served = routed_model or model
    return JobRecord(
        id=job_id,
        api_key_id=api_key_id,
        model=model,
        routed_model=served,
        attempts=[{"model": served, "provider": provider, "started_at": stamp}],
        reservation=reservation,
        provider=provider,
        status="queued",
        stage=Stage.QUEUED,
        input=input,
        metadata=metadata,
        cost=cost,
        callback_token=callback_token,
        created_at=stamp,
        updated_at=stamp,
        deadline_at=now + timeout,
        dispatch_state=DispatchState.PENDING,
        next_attempt_at=now,
        webhook_url=webhook_url,
        webhook_events=webhook_events if webhook_url is not None else None,
    )


def submitted(
    job: JobRecord, *, provider_task_id: str, cost: dict[str, Any] | None, now: float, next_poll_at: float
) -> tuple[JobRecord, str | None] | None:
    """The provider accepted the create; None if the job has moved on meanwhile."""
    if job.stage != Stage.QUEUED:
        if job.dispatch_state != DispatchState.DONE:
            return msgspec.structs.replace(job, dispatch_state=DispatchState.DONE, lease_until=None), None
        return None
    return (
        msgspec.structs.replace(
            job,
            stage=Stage.SUBMITTED,
            provider_task_id=provider_task_id,
            attempts=with_task(job.attempts, provider_task_id),
            cost={**job.cost, **(cost or {})},
            updated_at=to_iso(now),
            dispatch_state=DispatchState.DONE,
            next_attempt_at=None,
            # A callback that came before this answer asked for an early check (see confirm_soon).
            next_poll_at=min(next_poll_at, job.next_poll_at) if job.next_poll_at is not None else next_poll_at,
            lease_until=None,
        ),
        "job.submitted",
    )


def reported(job: JobRecord, report: Report, *, now: float) -> tuple[JobRecord, str | None] | None:
    """Apply a provider report; None when it would move the job backwards or change a finished job."""
    target = _STAGE_OF[report.status]
    if job.stage == Stage.TERMINAL or target <= job.stage:
        return None
    changes: dict[str, Any] = {"stage": target, "status": _later(job.status, report.status), "updated_at": to_iso(now)}
    if report.provider_task_id and not job.provider_task_id:
        changes["provider_task_id"] = report.provider_task_id
        changes["attempts"] = with_task(job.attempts, report.provider_task_id)
    if report.cost:
        changes["cost"] = {**job.cost, **report.cost}
    if target == Stage.TERMINAL:
        changes.update(
            output=report.output,
            error=report.error,
            completed_at=to_iso(now),
            dispatch_state=DispatchState.DONE,
            next_attempt_at=None,
            next_poll_at=None,
            lease_until=None,
        )
    event = "job.submitted" if report.status == "queued" else f"job.{report.status}"
    return msgspec.structs.replace(job, **changes), event


def _later(current: str, reported: Status) -> str:
    """The public status after a report: never an earlier one (a job retried on its next candidate after it was
    processing stays processing while the new task is queued)."""
    return reported if _RANK[reported] >= _RANK[current] else current


def failed(
    job: JobRecord, *, code: str, message: str, now: float, provider_code: str | None = None
) -> tuple[JobRecord, str | None] | None:
    error: dict[str, Any] = {"code": code, "message": message}
    if provider_code is not None:
        error["provider_code"] = provider_code
    return reported(job, Report(status="failed", error=error), now=now)


def cancelled(job: JobRecord, *, now: float) -> tuple[JobRecord, str | None] | None:
    return reported(job, Report(status="cancelled"), now=now)


def confirm_soon(job: JobRecord, *, now: float) -> tuple[JobRecord, str | None] | None:
    """A callback that cannot be trusted as is: check the provider's status endpoint now.

    A job still being sent keeps the dispatcher's lease; it is checked as soon as it is submitted.
    """
    if job.stage == Stage.TERMINAL:
        return None
    if job.stage == Stage.QUEUED:
        return msgspec.structs.replace(job, next_poll_at=now), None
    return msgspec.structs.replace(job, next_poll_at=now, lease_until=None), None


def rescheduled(job: JobRecord, **changes: Any) -> tuple[JobRecord, str | None] | None:
    """A bookkeeping change (retry time, lease, poll time) that logs no event; ignored once terminal."""
    if job.stage == Stage.TERMINAL:
        return None
    return msgspec.structs.replace(job, **changes), None


def with_task(attempts: list[dict[str, Any]], provider_task_id: str) -> list[dict[str, Any]]:
    """The attempts with the current one's provider task id set (a job's attempts are never changed in place)."""
    if not attempts:
        return attempts
    return [*attempts[:-1], {**attempts[-1], "provider_task_id": provider_task_id}]


def answer_lost(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attempts with the current one marked: a create to it was sent and its answer lost (it may have a task)."""
    if not attempts or attempts[-1].get("answer_lost"):
        return attempts
    return [*attempts[:-1], {**attempts[-1], "answer_lost": True}]


def rerouted(
    job: JobRecord,
    *,
    to_spec: ModelSpec,
    reason: str,
    error: dict[str, Any] | None,
    cost: dict[str, Any],
    now: float,
) -> tuple[JobRecord, str | None] | None:
    """Move a job on a route from its current candidate to `to_spec`, whose estimate is `cost`, to be sent there
    now; None once it has been accepted or has ended (a cancel or a deadline got there first)."""
    if job.stage != Stage.QUEUED or not job.attempts:
        return None
    left = {**job.attempts[-1], "left": reason, "left_at": to_iso(now)}
    if error is not None:
        left["error"] = error
    return _moved(job, left, to_spec=to_spec, cost=cost, now=now)


def retried(
    job: JobRecord, report: Report, *, to_spec: ModelSpec, cost: dict[str, Any], now: float
) -> tuple[JobRecord, str | None] | None:
    """A route's `retry_failed`: the provider failed the job's accepted task with `report`; move the job to
    `to_spec` (estimate `cost`), the left attempt keeping the provider's error and what it said the task cost.

    None unless the job is submitted, out of the dispatcher's hands and unfinished (the caller then applies the
    report as is). The stage goes back to QUEUED for the dispatcher; the status stays what it was."""
    if job.stage not in (Stage.SUBMITTED, Stage.PROCESSING) or job.dispatch_state != DispatchState.DONE:
        return None
    if not job.attempts:
        return None
    left = {
        **job.attempts[-1],
        "left": "generation_failed",
        "left_at": to_iso(now),
        "error": report.error,
        "cost": {**job.cost, **(report.cost or {})},
    }
    if job.provider_task_id and not left.get("provider_task_id"):
        left["provider_task_id"] = job.provider_task_id
    moved = _moved(job, left, to_spec=to_spec, cost=cost, now=now)
    return msgspec.structs.replace(moved[0], stage=Stage.QUEUED, next_poll_at=None, poll_attempts=0), moved[1]


def _moved(
    job: JobRecord, left: dict[str, Any], *, to_spec: ModelSpec, cost: dict[str, Any], now: float
) -> tuple[JobRecord, str]:
    """The job moved from its current attempt (`left`, as it is left) to a new one on `to_spec`, to be sent now."""
    stamp = to_iso(now)
    arrived = {"model": to_spec.id, "provider": to_spec.provider, "started_at": stamp}
    return (
        msgspec.structs.replace(
            job,
            attempts=[*job.attempts[:-1], left, arrived],
            routed_model=to_spec.id,
            provider=to_spec.provider,
            provider_task_id=None,
            cost=cost,  # the job's reservation, if it has one, is apart and stays as it is
            updated_at=stamp,
            dispatch_state=DispatchState.PENDING,
            dispatch_attempts=0,
            next_attempt_at=now,
            lease_until=None,
        ),
        "job.rerouted",
    )


def left_task(job: JobRecord, provider_task_id: str | None) -> bool:
    """Whether `provider_task_id` is the task of a candidate the job has left (anything it says is stale)."""
    return provider_task_id is not None and any(
        a.get("provider_task_id") == provider_task_id for a in job.attempts[:-1]
    )
