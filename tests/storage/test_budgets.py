"""Budgets in the store, on both backends: reservations held and refused in the create's transaction, settled in
the terminal write's, budget.threshold events of the key alone, and their pruning by age."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from service import lifecycle
from service.lifecycle import Report
from service.providers import all_models
from storage import IdempotencyClaim, JobRecord, OverBudget, Stage, Store
from storage.budgets import charge, resets_at
from tests.storage.factories import KEY_A, make_job


def reserving(estimate: str, **changes: Any) -> JobRecord:
    return make_job(reservation={"period": "total", "credits": estimate}, **changes)


def ended(job: JobRecord, **changes: Any) -> Any:
    """A decide function that makes the job terminal (failed unless `changes` say otherwise)."""

    def decide(current: JobRecord) -> tuple[JobRecord, str]:
        fields = {"status": "failed", "stage": Stage.TERMINAL, "completed_at": "2025-06-01T12:01:00.000Z", **changes}
        return msgspec.structs.replace(current, **fields), f"job.{fields['status']}"

    return decide


async def test_a_reservation_past_the_limit_is_refused_writing_nothing(store: Store) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("100"), period="total")
    await store.create_job(reserving("60"), "job.created")
    refused = reserving("50")
    with pytest.raises(OverBudget) as raised:
        await store.create_job(refused, "job.created")
    assert (raised.value.limit, raised.value.spent, raised.value.reserved, raised.value.estimate) == (100, 0, 60, 50)
    assert await store.get_job(refused.id) is None
    assert (await store.budget_totals(KEY_A.id, "total")).reserved_credits == 60
    await store.create_job(reserving("40"), "job.created")  # exactly up to the limit
    assert (await store.budget_totals(KEY_A.id, "total")).reserved_credits == 100


async def test_an_idempotent_replay_reserves_nothing(store: Store) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("100"), period="total")
    claim = IdempotencyClaim(key="k", request_hash="h")
    first = await store.create_job(reserving("60"), "job.created", idempotency=claim)
    again = await store.create_job(reserving("60"), "job.created", idempotency=claim)
    assert (again.created, again.job.id) == (False, first.job.id)
    assert (await store.budget_totals(KEY_A.id, "total")).reserved_credits == 60


async def test_the_terminal_write_settles_once_releasing_or_charging(store: Store) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("1000"), period="total")
    never_sent = (await store.create_job(reserving("50"), "job.created")).job
    accepted = (await store.create_job(reserving("50", provider_task_id="t-1"), "job.created")).job
    reported = (await store.create_job(reserving("50", provider_task_id="t-2"), "job.created")).job
    await store.update_job(never_sent.id, ended(never_sent))
    await store.update_job(accepted.id, ended(accepted))
    await store.update_job(reported.id, ended(reported, status="succeeded", cost={"credits_charged": 45.5}))
    await store.update_job(reported.id, ended(reported, status="succeeded"))  # a terminal job is never settled again
    totals = await store.budget_totals(KEY_A.id, "total")
    assert (totals.reserved_credits, totals.spent_credits) == (0, Decimal("95.5"))  # 0 + 50 + 45.5


async def test_thresholds_announce_once_and_again_after_falling_back(store: Store) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("100"), period="total")
    first = await store.create_job(reserving("80"), "job.created")
    await store.create_job(reserving("10"), "job.created")  # 90 %: 80 % was announced already
    await store.update_job(first.job.id, ended(first.job))  # never sent: back to 10 %
    await store.create_job(reserving("90"), "job.created")  # 100 %: both again
    events = [e for e in await store.events_after(0, api_key_id=KEY_A.id) if e.type == "budget.threshold"]
    assert [msgspec.json.decode(e.detail or b"")["threshold"] for e in events] == [80, 80, 100]
    assert {(e.job_id, e.job) for e in events} == {("", b"null")}


async def test_prune_removes_threshold_events_by_age(store: Store) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("10"), period="total")
    await store.create_job(reserving("10", created_at="2025-06-01T12:00:00.000Z"), "job.created")  # 80 and 100 %
    assert (await store.prunable("2025-06-01T11:00:00.000Z")).events == 0
    assert (await store.prunable("2025-06-02T00:00:00.000Z")).events == 2
    assert (await store.prune("2025-06-02T00:00:00.000Z")).events == 2
    assert [e.type for e in await store.events_after(0, api_key_id=KEY_A.id)] == ["job.created"]


def test_a_charge_is_the_reported_one_else_nothing_if_never_accepted_else_the_estimate() -> None:
    estimate = Decimal("50")
    assert charge(make_job(), "credits", estimate) == 0
    assert charge(make_job(provider_task_id="t"), "credits", estimate) == 50
    assert charge(make_job(attempts=[{"provider_task_id": "t"}]), "credits", estimate) == 50
    refunded = make_job(provider_task_id="t", cost={"credits_charged": 50, "credits_refunded": 50})
    assert charge(refunded, "credits", estimate) == 0
    assert charge(make_job(cost={"usd_charged": 0.1}), "usd", Decimal(0)) == Decimal("0.1")  # exact, not the float


def test_periods_reset_at_the_next_utc_day_or_month() -> None:
    assert resets_at("day:2026-12-31") == "2027-01-01T00:00:00Z"
    assert resets_at("month:2026-12") == "2027-01-01T00:00:00Z"
    assert resets_at("month:2026-01") == "2026-02-01T00:00:00Z"
    assert resets_at("total") is None


async def test_a_job_retried_on_its_next_candidate_is_charged_what_each_accepting_provider_reported(
    store: Store,
) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("1000"), period="total")
    first = {"model": "seedancee2/fast", "provider": "seedancee2", "started_at": "2025-06-01T12:00:00.000Z"}
    on_route = reserving("80", model="sd2", routed_model=first["model"], attempts=[first])
    job = (await store.create_job(on_route, "job.created")).job
    to_mini = all_models()["seedancee2/mini"]

    def accepted(task_id: str) -> Any:
        return lambda j: lifecycle.submitted(j, provider_task_id=task_id, cost=None, now=1.0, next_poll_at=2.0)

    failed = Report(
        status="failed",
        error={"code": "generation_failed", "message": "no video"},
        cost={"credits_charged": 30, "credits_refunded": 10},  # a provider that bills part of a failed generation
    )
    await store.update_job(job.id, accepted("t-1"))
    moved = await store.update_job(
        job.id, lambda j: lifecycle.retried(j, failed, to_spec=to_mini, cost={"credits_estimate": 50}, now=3.0)
    )
    assert moved.event is not None
    assert (await store.budget_totals(KEY_A.id, "total")).reserved_credits == 80  # not settled: it goes on
    await store.update_job(job.id, accepted("t-2"))
    succeeded = Report(status="succeeded", output={"videos": []}, cost={"credits_charged": 50})
    await store.update_job(job.id, lambda j: lifecycle.reported(j, succeeded, now=4.0))
    totals = await store.budget_totals(KEY_A.id, "total")
    assert (totals.reserved_credits, totals.spent_credits) == (0, 70)  # (30 - 10) for the left task + 50


async def test_a_retried_job_whose_last_provider_accepted_without_reporting_a_charge_is_not_free_there(
    store: Store,
) -> None:
    await store.set_api_key_budget(KEY_A.id, usd=None, credits=Decimal("1000"), period="total")
    first = {"model": "seedancee2/fast", "provider": "seedancee2", "started_at": "2025-06-01T12:00:00.000Z"}
    on_route = reserving("80", model="sd2", routed_model=first["model"], attempts=[first])
    job = (await store.create_job(on_route, "job.created")).job
    to_mini = all_models()["seedancee2/mini"]

    def accepted(task_id: str) -> Any:
        return lambda j: lifecycle.submitted(j, provider_task_id=task_id, cost=None, now=1.0, next_poll_at=2.0)

    failed = Report(
        status="failed", error={"code": "generation_failed", "message": "no video"}, cost={"credits_charged": 20}
    )
    await store.update_job(job.id, accepted("t-1"))
    await store.update_job(
        job.id, lambda j: lifecycle.retried(j, failed, to_spec=to_mini, cost={"credits_estimate": 50}, now=3.0)
    )
    await store.update_job(job.id, accepted("t-2"))
    succeeded = Report(status="succeeded", output={"videos": []})  # this provider reports no charge
    await store.update_job(job.id, lambda j: lifecycle.reported(j, succeeded, now=4.0))
    totals = await store.budget_totals(KEY_A.id, "total")
    # 20 reported for the left task, and the reserved estimate for the accepted one that reported nothing.
    assert (totals.reserved_credits, totals.spent_credits) == (0, 100)
