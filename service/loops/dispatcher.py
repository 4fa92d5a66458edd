"""The dispatcher: the outbox of upstream creates. Each queued job is sent to its provider once; a lost answer is
resolved before anything is sent again, and transient failures are retried with backoff and jitter."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from service import lifecycle
from service.errors import OutcomeUnknown, PermanentError, ProviderError, TransientError
from service.loops.leased import LeasedLoop
from service.schedule import Backoff
from storage import DispatchState, JobRecord, Stage

if TYPE_CHECKING:
    from service.gateway import Gateway
    from service.providers.base import ModelSpec, ProviderAdapter, Submission
    from service.runtime import Runtime

log = structlog.get_logger("reelay.worker")


class Dispatcher(LeasedLoop):
    """Sends queued jobs upstream once, retrying transient failures with backoff and jitter."""

    name = "dispatch"

    backoff = Backoff()  # between create attempts that failed and may be retried
    max_token_wait = 10.0  # a create waits this long for a token in its task; longer, it goes back to the queue

    def __init__(self, runtime: Runtime, gateway: Gateway) -> None:
        super().__init__(
            runtime, gateway, wake=runtime.signals.new_job, concurrency=runtime.settings.dispatch_concurrency
        )

    async def claim(self, now: float, limit: int) -> list[JobRecord]:
        return await self.store.claim_dispatch(now, limit, self.lease_seconds)

    async def handle(self, job: JobRecord) -> None:
        now = self.clock()
        adapter = self.runtime.adapters.get(job.provider)
        spec = self.runtime.models.get(job.served_model)
        # No create of this job can have reached its provider: on a route it may move to the next candidate.
        unsent = job.dispatch_state != DispatchState.SENDING and not _answer_lost(job)
        if adapter is None or spec is None:
            message = f"provider {job.provider} is not configured"
            if not (unsent and await self._reroute(job, "not_configured", _error("provider_unavailable", message))):
                await self._fail(job, "provider_unavailable", message)
            return
        if now >= job.deadline_at:
            await self._fail(job, "timeout", "the job was not accepted by the provider before its deadline")
            return
        admission = await self.runtime.health.admit(job.provider, now)
        if not admission.allowed:
            # The provider's circuit is open: the job goes to the next candidate of its route, or waits in the
            # queue, unsent, and is not failed for it.
            message = f"the circuit of provider {job.provider} is open"
            if not (unsent and await self._reroute(job, "circuit_open", _error("circuit_open", message))):
                await self._wait(job, admission.retry_at if admission.retry_at is not None else now + 1.0)
            return
        try:
            if await self._token(job):
                await self._send(job, spec, adapter)
        finally:
            # A probe whose create was not sent (or not answered) is given back: it must not hold the circuit.
            await self.runtime.health.release(job.provider, admission, self.clock())

    async def _send(self, job: JobRecord, spec: ModelSpec, adapter: ProviderAdapter) -> None:
        """Send the admitted job's create (or, after a lost answer, first find out whether it made a task)."""
        if job.dispatch_state == DispatchState.SENDING:
            # An earlier create may have reached the provider; find out before sending again.
            if adapter.unknown_outcome == "lookup":
                try:
                    found = await adapter.find_submission(job)
                except ProviderError as exc:
                    await self._retry(job, exc, maybe_sent=True)
                    return
                if found is not None:
                    log.info("dispatch.recovered", provider_task_id=found.provider_task_id)
                    await self._submitted(job, found.provider_task_id, found.cost, spec.callbacks)
                    return
                if not await self._token(job):  # the lookup spent the first: the create needs its own
                    return
                # The provider shows no task: the lost create counts as one transient failure of this candidate.
                if job.dispatch_attempts >= self.runtime.settings.route_transient_attempts:
                    message = f"{job.dispatch_attempts} creates failed; the last answer was lost and no task exists"
                    if await self._reroute(job, "not_created", _error("provider_unavailable", message)):
                        return
            elif adapter.unknown_outcome != "idempotency":
                await self._fail(
                    job,
                    "submit_outcome_unknown",
                    "the create request was sent but its answer was lost; it is not resent, to avoid paying twice",
                )
                return
        # Read before the job is marked as being sent: a failed read must leave it safe to send again.
        full_input = await self.gateway.full_input(job)
        job = await self._update(
            job,
            lambda j: lifecycle.rescheduled(
                j, dispatch_state=DispatchState.SENDING, dispatch_attempts=j.dispatch_attempts + 1
            ),
        )
        if job.stage != Stage.QUEUED or job.dispatch_state != DispatchState.SENDING:
            return  # cancelled or completed meanwhile
        # Only the create carries the data URIs; the job written back below does not.
        sent = msgspec.structs.replace(job, input=full_input)
        # A create still unanswered at the deadline is not waited for: the job fails then, not when it answers.
        deadline = asyncio.timeout(max(job.deadline_at - self.clock(), 0.0))
        try:
            async with deadline:
                submission = await self._create(sent, spec, adapter)
        except TimeoutError:
            if not deadline.expired():
                raise
            message = "the provider had not answered the create by the job's deadline (it may still run the task)"
            await self._fail(job, "timeout", message)
        except PermanentError as exc:
            # A refusal is an answer: nothing was created (after a lost answer, only a lookup that found no task
            # or an idempotent replay can have led here, and the replay's refusal proves there is none).
            refusal = _error("provider_rejected", exc.message, exc.provider_code)
            if not await self._reroute(job, "rejected", refusal):
                await self._fail(job, "provider_rejected", exc.message, exc.provider_code)
        except OutcomeUnknown as exc:
            await self._retry(job, exc, maybe_sent=True)
        except TransientError as exc:
            if exc.give_up_after is not None and job.dispatch_attempts >= exc.give_up_after:
                message = f"{exc} (on {job.dispatch_attempts} attempts, so taken as a refusal)"
                refusal = _error("provider_rejected", message, exc.provider_code)
                if _answer_lost(job) or not await self._reroute(job, "rejected", refusal):
                    await self._fail(job, "provider_rejected", message, exc.provider_code)
            elif (
                exc.maybe_sent
                or _answer_lost(job)  # after a lost answer only a proof moves it: it retries here until the deadline
                or job.dispatch_attempts < self.runtime.settings.route_transient_attempts
            ):
                await self._retry(job, exc, maybe_sent=exc.maybe_sent)
            else:
                message = f"{exc} (on {job.dispatch_attempts} attempts in a row)"
                unavailable = _error("provider_unavailable", message, exc.provider_code)
                if not await self._reroute(job, "unavailable", unavailable):
                    await self._retry(job, exc, maybe_sent=False)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("dispatch.bad_answer", error=str(exc))
            await self._retry(job, exc, maybe_sent=True)
        else:
            await self._submitted(job, submission.provider_task_id, submission.cost, spec.callbacks)

    async def _token(self, job: JobRecord) -> bool:
        """A token of the provider's rate budget for one request: waited for here while the wait is short (creates
        go before status checks), else the job goes back to the queue until then and False."""
        rates = self.runtime.rates
        if rates is None:
            return True
        while True:
            granted, wait = await rates.take(job.provider, 1, create=True)
            if granted:
                return True
            if wait > self.max_token_wait or self.clock() + wait >= job.deadline_at:
                await self._wait(job, self.clock() + wait)
                return False
            await asyncio.sleep(wait)

    async def _create(self, job: JobRecord, spec: ModelSpec, adapter: ProviderAdapter) -> Submission:
        """The upstream create, its latency observed by provider and outcome."""
        started = time.perf_counter()
        outcome = "interrupted"  # unless set below: the task was cancelled (shutdown)
        error: Exception | None = None
        try:
            submission = await adapter.submit(job, spec, self.gateway.callback_url(job, adapter))
            outcome = "accepted"
            return submission
        except Exception as exc:
            outcome = _create_outcome(exc)
            error = exc
            raise
        finally:
            latency = time.perf_counter() - started
            histogram = self.runtime.metrics.upstream_create
            histogram.labels(provider=job.provider, outcome=outcome).observe(latency)
            if outcome != "interrupted":
                await self.runtime.health.record(
                    job.provider,
                    ok=error is None,
                    counts=error is not None and _speaks_of_provider(error),
                    latency=latency,
                    error=None if error is None else str(error)[:500],
                    now=self.clock(),
                )

    async def _submitted(self, job: JobRecord, task_id: str, cost: dict[str, Any] | None, callbacks: bool) -> None:
        now = self.clock()
        settings = self.runtime.settings
        # A provider with callbacks is polled only once its callback is overdue; the others when a job may be done
        # (and, under a rate budget, no sooner than its share of it).
        first_poll = (
            settings.callback_grace_seconds if callbacks else await self.runtime.poll_delay(job.provider, 0, self.rng)
        )
        await self._update(
            job,
            lambda j: lifecycle.submitted(
                j, provider_task_id=task_id, cost=cost, now=now, next_poll_at=min(now + first_poll, j.deadline_at)
            ),
        )

    async def _reroute(self, job: JobRecord, reason: str, error: dict[str, Any]) -> bool:
        """Move a job on a route to its next candidate, to be sent at once; False when it has none (a model id, or
        every candidate tried or unable to take it), and the job goes on as a job on a model id would."""
        to = await self.gateway.next_candidate(job)  # None past the deadline: it stops failover
        if to is None:
            return False
        spec, cost = to
        now = self.clock()
        # Gateway.update_job counts the move and wakes the dispatcher: its create goes out at once.
        await self.gateway.update_job(
            job.id, lambda j: lifecycle.rerouted(j, to_spec=spec, reason=reason, error=error, cost=cost, now=now)
        )
        return True  # moved, or ended meanwhile (a cancel): either way nothing more to do with it here

    async def _wait(self, job: JobRecord, until: float) -> None:
        """Put the job back in the queue until `until` (capped at its deadline) without counting an attempt."""
        next_at = min(until, job.deadline_at)
        await self._update(job, lambda j: lifecycle.rescheduled(j, next_attempt_at=next_at, lease_until=None))

    async def _retry(self, job: JobRecord, exc: Exception, *, maybe_sent: bool) -> None:
        now = self.clock()
        retry_after = exc.retry_delay(now) if isinstance(exc, TransientError) else None
        if isinstance(exc, TransientError) and exc.status == 429 and retry_after and self.runtime.rates is not None:
            await self.runtime.rates.pause(job.provider, retry_after)  # for every job and replica
        delay = self.backoff.delay(job.dispatch_attempts, self.rng, at_least=retry_after)
        state = DispatchState.SENDING if maybe_sent else DispatchState.PENDING
        log.warning("dispatch.retrying", error=str(exc), delay=round(delay, 2), attempt=job.dispatch_attempts)
        next_at = min(now + delay, job.deadline_at)  # at the deadline the job fails with `timeout`
        await self._update(
            job,
            lambda j: lifecycle.rescheduled(
                j,
                dispatch_state=state,
                next_attempt_at=next_at,
                lease_until=None,
                attempts=lifecycle.answer_lost(j.attempts) if maybe_sent else j.attempts,
            ),
        )


def _answer_lost(job: JobRecord) -> bool:
    """Whether a create to the job's current candidate was sent and its answer lost (it may have made a task)."""
    return bool(job.attempts and job.attempts[-1].get("answer_lost"))


def _error(code: str, message: str, provider_code: str | None = None) -> dict[str, Any]:
    """Why a candidate was left, shaped as a job error."""
    error = {"code": code, "message": message}
    if provider_code is not None:
        error["provider_code"] = provider_code
    return error


def _create_outcome(exc: Exception) -> str:
    if isinstance(exc, PermanentError):
        return "rejected"
    if isinstance(exc, OutcomeUnknown):
        return "unknown"
    return "retryable" if isinstance(exc, TransientError) else "bad_answer"


# Refusals that are about the provider account rather than the job's input.
_ACCOUNT_REFUSALS = frozenset({401, 402, 403})


def _speaks_of_provider(exc: Exception) -> bool:
    """Whether a failed create says something about the provider's health (so it counts towards its circuit)."""
    if isinstance(exc, PermanentError):
        return exc.status in _ACCOUNT_REFUSALS
    return True  # transient errors, lost answers, timeouts, unreadable answers
