"""The job state machine: forward only, terminal is final, each change names its event."""

from __future__ import annotations

import itertools

import pytest

from service import lifecycle
from service.lifecycle import Report
from service.providers import all_models
from service.wire import job_view
from storage import DispatchState, JobRecord, Stage


def _job() -> JobRecord:
    return lifecycle.new_job(
        job_id="job_01JZ0000000000000000000000",
        api_key_id="k",
        model="seedancee2/pro",
        provider="seedancee2",
        input={"prompt": "p"},
        metadata={},
        cost={"credits_estimate": 100},
        callback_token="t",
        now=1_000.0,
        timeout=60,
    )


def _apply(job: JobRecord, status: str) -> tuple[JobRecord, str | None]:
    change = lifecycle.reported(job, Report(status=status), now=1_001.0)  # type: ignore[arg-type]
    return change if change is not None else (job, None)


def test_submitted_moves_a_queued_job_forward_once() -> None:
    job = _job()
    change = lifecycle.submitted(
        job, provider_task_id="vid_1", cost={"credits_reserved": 100}, now=1_000.5, next_poll_at=1_100
    )
    assert change is not None
    submitted, event = change
    assert event == "job.submitted"
    assert (submitted.stage, submitted.status, submitted.provider_task_id) == (Stage.SUBMITTED, "queued", "vid_1")
    assert submitted.dispatch_state == DispatchState.DONE
    assert submitted.cost == {"credits_estimate": 100, "credits_reserved": 100}
    assert lifecycle.submitted(submitted, provider_task_id="vid_2", cost=None, now=1_001, next_poll_at=1_100) is None


@pytest.mark.parametrize("order", list(itertools.permutations(["queued", "processing", "succeeded", "failed"])))
def test_any_order_of_reports_never_moves_backwards_and_has_one_terminal(order: tuple[str, ...]) -> None:
    job = _job()
    events: list[str] = []
    stages = [job.stage]
    for status in order:
        job, event = _apply(job, status)
        if event:
            events.append(event)
        stages.append(job.stage)
    assert stages == sorted(stages)
    terminal = [e for e in events if e in {"job.succeeded", "job.failed", "job.cancelled"}]
    assert len(terminal) == 1
    first_terminal = next(s for s in order if s in {"succeeded", "failed"})
    assert job.status == first_terminal
    assert job.completed_at is not None


def test_terminal_status_is_final() -> None:
    job, _ = _apply(_job(), "succeeded")
    for status in ("queued", "processing", "failed", "cancelled", "succeeded"):
        assert lifecycle.reported(job, Report(status=status), now=2_000.0) is None  # type: ignore[arg-type]
    assert lifecycle.cancelled(job, now=2_000.0) is None
    assert lifecycle.failed(job, code="timeout", message="late", now=2_000.0) is None
    assert lifecycle.rescheduled(job, next_poll_at=1.0) is None


def test_failure_carries_code_message_and_provider_code() -> None:
    change = lifecycle.failed(
        _job(), code="provider_rejected", message="no credits", provider_code="insufficient_credits", now=5.0
    )
    assert change is not None
    job, event = change
    assert event == "job.failed"
    assert job.error == {"code": "provider_rejected", "message": "no credits", "provider_code": "insufficient_credits"}
    assert job.next_poll_at is None
    assert job.next_attempt_at is None


def test_public_view_has_the_documented_fields() -> None:
    view = job_view(_job())
    assert list(view) == [
        "id", "model", "routed_model", "provider", "status", "input", "metadata", "provider_task_id",
        "output", "error", "cost", "created_at", "updated_at", "completed_at", "attempts",
    ]  # fmt: skip
    assert view["cost"] == {"credits_estimate": 100, "usd_estimate": None, "credits_charged": None, "usd_charged": None}
    assert view["created_at"].endswith("Z")


MINI = all_models()["seedancee2/mini"]
GENERATION_FAILED = {"code": "generation_failed", "message": "no video", "provider_code": "generation_failed"}


def _processing() -> JobRecord:
    """A job its provider accepted (task vid_1, 100 credits reserved) and is processing."""
    change = lifecycle.submitted(
        _job(), provider_task_id="vid_1", cost={"credits_reserved": 100}, now=1_000.5, next_poll_at=1_010
    )
    assert change is not None
    return _apply(change[0], "processing")[0]


def test_a_retried_job_goes_back_to_the_dispatcher_keeping_its_status_and_the_left_tasks_cost() -> None:
    failure = Report(status="failed", error=GENERATION_FAILED, cost={"credits_charged": 0, "credits_refunded": 100})
    change = lifecycle.retried(_processing(), failure, to_spec=MINI, cost={"credits_estimate": 50}, now=1_002.0)
    assert change is not None
    job, event = change
    assert event == "job.rerouted"
    assert (job.stage, job.status) == (Stage.QUEUED, "processing")
    assert (job.routed_model, job.provider, job.provider_task_id) == ("seedancee2/mini", "seedancee2", None)
    assert (job.dispatch_state, job.dispatch_attempts, job.next_attempt_at) == (DispatchState.PENDING, 0, 1_002.0)
    assert (job.next_poll_at, job.lease_until, job.poll_attempts) == (None, None, 0)
    assert job.cost == {"credits_estimate": 50}
    left, now_on = job.attempts
    assert (left["left"], left["provider_task_id"], left["error"]) == ("generation_failed", "vid_1", GENERATION_FAILED)
    assert left["cost"] == {
        "credits_estimate": 100,
        "credits_reserved": 100,
        "credits_charged": 0,
        "credits_refunded": 100,
    }
    assert (now_on["model"], now_on.get("provider_task_id"), now_on.get("left")) == ("seedancee2/mini", None, None)
    assert lifecycle.left_task(job, "vid_1")
    assert not lifecycle.left_task(job, "vid_2")


def test_a_retried_processing_job_never_shows_queued_again() -> None:
    failure = Report(status="failed", error=GENERATION_FAILED)
    change = lifecycle.retried(_processing(), failure, to_spec=MINI, cost={}, now=1_002.0)
    assert change is not None
    early, event = _apply(change[0], "queued")  # the new task's callback came before the create's answer
    assert (early.stage, early.status, event) == (Stage.SUBMITTED, "processing", "job.submitted")
    accepted = lifecycle.submitted(change[0], provider_task_id="vid_2", cost=None, now=1_003.0, next_poll_at=1_010)
    assert accepted is not None
    assert (accepted[0].stage, accepted[0].status) == (Stage.SUBMITTED, "processing")
    done, _ = _apply(accepted[0], "succeeded")
    assert done.status == "succeeded"


def test_only_an_accepted_unfinished_job_out_of_the_dispatchers_hands_is_retried() -> None:
    failure = Report(status="failed", error=GENERATION_FAILED)
    finished, _ = _apply(_processing(), "succeeded")
    in_flight, _ = _apply(_job(), "processing")  # a callback overtook the create's answer: still being sent
    for job in (_job(), finished, in_flight):
        assert lifecycle.retried(job, failure, to_spec=MINI, cost={}, now=1_002.0) is None
