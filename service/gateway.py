"""The application's use cases: create, read, list and cancel jobs, take in provider webhooks, and answer what the
HTTP layer asks about API keys, models, usage and readiness."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from reelay_signing import SignatureError
from service import budgets, deliveries, lifecycle, routes
from service.capabilities import check_for
from service.circuits import ProviderView
from service.errors import Conflict, InvalidRequest, NotFound, WebhookRejected
from service.health import check_ready
from service.ids import decode_cursor, encode_cursor, new_job_id, new_token, new_webhook_secret
from service.inline import check_inline, has_placeholders, restore_inline, split_inline
from service.providers.base import ModelSpec, ProviderAdapter, WebhookNotice
from service.routes import Route
from service.vocabulary import TERMINAL
from service.wire import DEFAULT_JOB_WEBHOOK_EVENTS, JobCreate
from storage import (
    ApiKeyRecord,
    Declined,
    IdempotencyClaim,
    IdempotencyConflict,
    JobFilter,
    JobNotFound,
    JobRecord,
    OverBudget,
    Receipt,
    TaskTaken,
    UpdateOutcome,
    UsageRow,
)
from storage.base import Decide, Decision
from storage.budgets import period_key

if TYPE_CHECKING:
    from service.runtime import Runtime

log = structlog.get_logger("reelay.gateway")

# Why a webhook leaves its job as it is (the reasons `_apply` declines with).
_OTHER_PROVIDER = "other_provider"  # the job is another provider's: no job of this one has that id
_OTHER_TASK = "other_task"  # the job belongs to another upstream task
_UNCONFIRMED = "unconfirmed"  # the provider's status endpoint must confirm the callback before it changes anything
_WHOLE_SECONDS = re.compile(r"[0-9]{1,12}")  # a `Cancel-After` value; longer ones are out of range anyway


class Gateway:
    """Everything the HTTP layer and the loops ask of Reelay about jobs, keys, models and usage."""

    def __init__(self, runtime: Runtime) -> None:
        self._settings = runtime.settings
        self._store = runtime.store
        self._adapters = runtime.adapters
        self._models = runtime.models
        self._clock = runtime.clock
        self._metrics = runtime.metrics
        self._signals = runtime.signals
        self._health = runtime.health
        self._rates = runtime.rates
        self._poll_schedule = runtime.poll_schedule
        # Whether any route moves failed generations on: if none does, a failure callback needs no read first.
        self._retries_failed = any(route.retry_failed for route in self._settings.routes.values())

    # -- models ------------------------------------------------------------------------------

    def plan(self, model_id: str, given: dict[str, Any]) -> tuple[str, list[tuple[ModelSpec, ProviderAdapter]]]:
        """The job's model id (an alias resolved) and its candidates, in the order it goes to them: for a route, the
        candidates that are configured and can serve `given` (a 400 naming each refusal when none can); for a
        model id, that model alone (its 400s as they always were)."""
        model_id = self._settings.model_aliases.get(model_id, model_id)
        route = self._settings.routes.get(model_id)
        if route is None:
            spec, adapter = self.resolve_model(model_id)
            check_for(spec, adapter, given)
            return spec.id, [(spec, adapter)]
        candidates, refused = routes.plan(route, self._models, self._adapters, given)
        if not candidates:
            raise routes.no_candidate(route, refused)
        return route.id, candidates

    async def next_candidate(self, job: JobRecord) -> tuple[ModelSpec, dict[str, Any]] | None:
        """Where a job on a route goes next, with that candidate's estimate for it: the first of its plan recomputed
        (candidates not tried yet, configured, able to serve its input; under a reservation also priced in each unit
        the reservation holds, unless the operator allows unpriced models). None for a job on a model id, past its
        deadline (which stops failover), or with no candidate left."""
        route = self._settings.routes.get(job.model)
        if route is None or self._clock() >= job.deadline_at:
            return None
        given = await self.full_input(job)
        tried = frozenset(attempt["model"] for attempt in job.attempts)
        held = () if self._settings.budget_allow_unpriced else ("usd", "credits")
        units = tuple(unit for unit in held if (job.reservation or {}).get(unit) is not None)
        candidates, _ = routes.plan(route, self._models, self._adapters, given, skip=tried, priced_in=units)
        if not candidates:
            return None
        spec, adapter = candidates[0]
        return spec, adapter.estimate(spec, given)

    async def report_decision(self, job: JobRecord | None, report: lifecycle.Report) -> Callable[[JobRecord], Decision]:
        """How a provider's report about a job's current task changes it: as `lifecycle.reported` says, unless the
        job (as read before the write: `job`) is on a route with `retry_failed`, the provider failed the task with
        `generation_failed` and the route has a next candidate: then it moves there (`lifecycle.retried`).
        The caller checks that the report is about the job's current task."""
        route = None if job is None else self._settings.routes.get(job.model)
        failed = report.status == "failed" and (report.error or {}).get("code") == "generation_failed"
        to = await self.next_candidate(job) if job is not None and failed and route and route.retry_failed else None
        tried = 0 if job is None else len(job.attempts)
        now = self._clock()

        def decide(current: JobRecord) -> Decision:
            # The candidate was chosen from the job as read: only a job still on the same attempt moves there.
            if to is not None and len(current.attempts) == tried:
                moved = lifecycle.retried(current, report, to_spec=to[0], cost=to[1], now=now)
                if moved is not None:
                    return moved
            return lifecycle.reported(current, report, now=now)

        return decide

    def resolve_model(self, model_id: str) -> tuple[ModelSpec, ProviderAdapter]:
        model_id = self._settings.model_aliases.get(model_id, model_id)
        spec = self._models.get(model_id)
        if spec is None:
            raise InvalidRequest(
                f"model: unknown model {model_id!r}; GET /v1/models lists the model ids",
                details={"field": "model", "allowed": sorted([*self._models, *self._settings.routes])},
            )
        adapter = self._adapters.get(spec.provider)
        if adapter is None:
            raise InvalidRequest(
                f"model: {model_id} is unavailable because provider {spec.provider} is not configured "
                f"(set REELAY_{spec.provider.upper()}_API_KEY)",
                details={"field": "model", "provider": spec.provider},
            )
        return spec, adapter

    def callback_url(self, job: JobRecord, adapter: ProviderAdapter) -> str:
        if adapter.signs_webhooks and not adapter.callback_per_job:
            return f"{self._settings.public_url}/webhooks/{job.provider}"
        # Unsigned callbacks are authenticated by an unguessable per-job token in the URL.
        return f"{self._settings.public_url}/webhooks/{job.provider}/{job.id}/{job.callback_token}"

    def list_models(self) -> list[tuple[ModelSpec, bool]]:
        """Every model, and whether its provider is configured here."""
        return [(spec, spec.provider in self._adapters) for spec in self._models.values()]

    def list_routes(self) -> list[tuple[Route, list[tuple[ModelSpec, bool]]]]:
        """Every route, with each candidate and whether its provider is configured here."""
        return [
            (route, [(self._models[c], self._models[c].provider in self._adapters) for c in route.candidates])
            for route in self._settings.routes.values()
        ]

    # -- keys, usage, readiness --------------------------------------------------------------

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._store.get_api_key(key_id)

    async def usage(self, api_key_id: str, start: str | None, end: str | None) -> list[UsageRow]:
        """The caller's jobs created in [start, end), grouped by status, model and day."""
        return await self._store.usage(api_key_id, start, end)

    async def check_ready(self) -> None:
        """Raise NotReady unless the database can take jobs."""
        await check_ready(self._store, self._settings)

    async def providers(self) -> list[tuple[str, bool, ProviderView, int, float | None, float | None, float | None]]:
        """Every provider: whether it is configured here, its health, its unfinished jobs in the database, its rate
        limit, how many seconds its oldest due status check is overdue (None when none is), and the seconds between
        two status checks of one job at its cadence's cap, or its share of the budget when longer (None when not
        configured here)."""
        now = self._clock()
        views = await self._health.view(now)
        in_flight = await self._store.jobs_in_flight()
        names = sorted({spec.provider for spec in self._models.values()} | set(self._adapters))
        oldest = await self._store.oldest_due_polls(names)
        rates = self._rates

        def behind(name: str) -> float | None:
            due = oldest.get(name)
            return None if due is None or due > now else round(now - due, 3)

        def interval(name: str) -> float | None:
            if name not in self._adapters:
                return None
            cap = self._poll_schedule(name).cap
            return round(cap if rates is None else max(cap, rates.spacing(name, in_flight.get(name, 0))), 1)

        return [
            (
                n,
                n in self._adapters,
                views.get(n, ProviderView()),
                in_flight.get(n, 0),
                None if rates is None else rates.limit(n),
                behind(n),
                interval(n),
            )
            for n in names
        ]

    # -- jobs --------------------------------------------------------------------------------

    async def create_job(
        self,
        api_key_id: str,
        request: JobCreate,
        idempotency_key: str | None,
        cancel_after: str | None = None,
        *,
        caller: ApiKeyRecord | None = None,
    ) -> tuple[JobRecord, bool]:
        """`caller` is the key's record, whose budget (if any) the job reserves in."""
        given: dict[str, Any] = msgspec.to_builtins(request.input)
        check_inline(given, self._settings.max_inline_bytes)
        model_id, candidates = self.plan(request.model, given)
        now = self._clock()  # read once: the job's created_at and its budget period are the same instant
        plan, reservation = self._budgeted(caller, candidates, given, now)
        spec, adapter = plan[0]
        limit = self._settings.job_timeout_seconds
        header_seconds = None if cancel_after is None else _whole_seconds(cancel_after, limit)
        if request.deadline_seconds is not None:
            _check_seconds(request.deadline_seconds, "deadline_seconds", limit)
        # Both bound the job: the smaller wins (a client library's default header cannot lengthen the body's).
        timeout = min((s for s in (request.deadline_seconds, header_seconds) if s is not None), default=limit)
        claim = None
        if idempotency_key is not None:
            if not (1 <= len(idempotency_key) <= 255 and idempotency_key.isascii() and idempotency_key.isprintable()):
                raise InvalidRequest(
                    "Idempotency-Key must be 1 to 255 printable ASCII characters",
                    details={"field": "Idempotency-Key"},
                )
            digest = idempotency_hash(request, header_seconds)
            claim = IdempotencyClaim(key=idempotency_key, request_hash=digest)
        webhook_url, webhook_events = self._job_webhook(request)
        if webhook_url is not None:
            # The key's secret exists before any delivery it signs can be recorded.
            await self._store.webhook_secret(api_key_id, new_secret=new_webhook_secret())
        shown, inline = split_inline(given)
        record = lifecycle.new_job(
            job_id=new_job_id(),
            api_key_id=api_key_id,
            model=model_id,
            routed_model=spec.id,
            provider=spec.provider,
            input=shown,
            metadata=dict(request.metadata),
            cost=adapter.estimate(spec, given),
            callback_token=new_token(),
            now=now,
            timeout=timeout,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            reservation=reservation,
        )
        try:
            outcome = await self._store.create_job(record, "job.created", idempotency=claim, inline=inline)
        except IdempotencyConflict as exc:
            raise Conflict(
                "Idempotency-Key was already used with a different request body",
                code="idempotency_conflict",
                details={"job_id": exc.job_id},
            ) from None
        except OverBudget as exc:
            log.info("budget.exhausted", api_key_id=api_key_id, unit=exc.unit, period=exc.period, model=spec.id)
            raise budgets.refused(exc) from None
        if outcome.created:
            log.info("job.created", job_id=record.id, provider=spec.provider, model=model_id, routed_model=spec.id)
            self._signals.new_job.set()
        return outcome.job, outcome.created

    def _budgeted(
        self,
        caller: ApiKeyRecord | None,
        plan: list[tuple[ModelSpec, ProviderAdapter]],
        given: dict[str, Any],
        now: float,
    ) -> tuple[list[tuple[ModelSpec, ProviderAdapter]], dict[str, Any] | None]:
        """The plan's candidates the caller's budget lets the job use, and what the job reserves (None: no budget);
        the store holds the reservation, or refuses it, in the create's transaction."""
        if caller is None or not caller.has_budget:
            return plan, None
        priced = [((spec, adapter), adapter.estimate(spec, given), spec.id) for spec, adapter in plan]
        return budgets.plan_under_budget(caller, priced, allow_unpriced=self._settings.budget_allow_unpriced, now=now)

    async def budget(self, api_key_id: str) -> budgets.BudgetStatus | None:
        """The key's budget in its current period, read afresh (the key cache may be behind); None without one."""
        key = await self._store.get_api_key(api_key_id)
        if key is None or not key.has_budget:
            return None
        totals = await self._store.budget_totals(key.id, period_key(key.budget_period or "total", self._clock()))
        return budgets.status(key, totals)

    def _job_webhook(self, request: JobCreate) -> tuple[str | None, list[str] | None]:
        """The job's checked `webhook_url` and its event filter (`["*"]` takes every type, as for endpoints)."""
        if request.webhook_url is None:
            if request.webhook_events is not None:
                raise InvalidRequest(
                    "webhook_events: only with webhook_url (the key's endpoints have their own `events`)",
                    details={"field": "webhook_events"},
                )
            return None, None
        url = deliveries.check_url(request.webhook_url, allow_private=self._settings.webhook_allow_private)
        given = request.webhook_events
        events = deliveries.check_events(
            list(DEFAULT_JOB_WEBHOOK_EVENTS) if given is None else given, field="webhook_events"
        )
        return url, events

    async def get_job(self, api_key_id: str | None, job_id: str) -> JobRecord:
        """One of the key's jobs; with no key (None), any job: the caller proved access otherwise (a signed URL)."""
        job = await self._store.get_job(job_id) if job_id.startswith("job_") else None
        if job is None or (api_key_id is not None and job.api_key_id != api_key_id):
            raise NotFound(f"no job {job_id!r}")
        return job

    async def full_input(self, job: JobRecord) -> dict[str, Any]:
        """The job's input with its data URIs, which only `GET /v1/jobs/{id}` and the upstream create use."""
        if not has_placeholders(job.input):
            return job.input  # most jobs: no read
        return restore_inline(job.input, await self._store.inline_data(job.id))

    async def list_jobs(
        self, api_key_id: str, filters: JobFilter, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        before = decode_cursor(cursor, "job_") if cursor else None
        found = await self._store.list_jobs(api_key_id, filters, limit=limit + 1, before_id=before)
        page = found[:limit]
        next_cursor = encode_cursor(page[-1].id) if len(found) > limit else None
        return page, next_cursor

    async def cancel_job(self, api_key_id: str, job_id: str) -> JobRecord:
        job = await self.get_job(api_key_id, job_id)
        if job.status == "cancelled":
            return job  # cancelling is idempotent: a retried cancel gets the job, not an error
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", code="job_finished")
        if job.provider_task_id:
            adapter = self._adapters.get(job.provider)
            if adapter is not None:
                try:
                    await adapter.cancel(job.provider_task_id)
                except Exception as exc:  # an upstream failure must not keep the caller's job running here
                    log.warning("job.cancel_upstream_failed", job_id=job_id, provider=job.provider, error=str(exc))
        outcome = await self.update_job(job_id, lambda j: lifecycle.cancelled(j, now=self._clock()))
        if outcome.job.status != "cancelled":
            raise Conflict(f"job {job_id} is already {outcome.job.status}", code="job_finished")
        return outcome.job

    async def update_job(self, job_id: str, decide: Decide, *, receipt: Receipt | None = None) -> UpdateOutcome:
        """Every change to a job goes through here (a webhook, a poll, a dispatch, a cancel, a timeout).

        Once the store has committed it, its event is logged, in one line, and a terminal one is counted.
        """
        outcome = await self._store.update_job(job_id, decide, receipt=receipt)
        if outcome.event is not None:
            job = outcome.job
            fields: dict[str, Any] = {"job_id": job.id, "provider": job.provider, "model": job.model}
            if outcome.event.detail is not None:  # job.rerouted's from, to and reason
                fields.update(msgspec.json.decode(outcome.event.detail))
            if job.error:
                fields["error_code"] = job.error.get("code")
                fields["reason"] = str(job.error.get("message", ""))[:500]
                if job.error.get("provider_code"):
                    fields["provider_code"] = job.error["provider_code"]
            emit = log.warning if job.status == "failed" else log.info
            emit(outcome.event.type, status=job.status, **fields)
            if job.status in TERMINAL:
                self._metrics.jobs_finished.labels(model=job.model, status=job.status).inc()
            if outcome.event.type == "job.rerouted":
                reason = str(job.attempts[-2].get("left"))
                self._metrics.route_failovers.labels(route=job.model, reason=reason).inc()
                self._signals.new_job.set()  # its create goes out now, not at the dispatcher's next idle check
        return outcome

    # -- webhooks ----------------------------------------------------------------------------

    async def receive_webhook(
        self,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        job_id: str | None = None,
        token: str | None = None,
    ) -> str:
        """Verify and apply one provider callback; returns what happened ("applied", "duplicate", ...).

        Raises NotFound (no such provider here), SignatureError (nothing changed) or WebhookRejected.
        """
        adapter = self._adapters.get(provider)
        if adapter is None:  # no such endpoint here: a 404, and no metrics label or log line per made-up name
            raise NotFound(f"no webhook endpoint for provider {provider!r}: it is unknown or not configured")
        job = None
        if job_id is not None:
            job = await self._store.get_job(job_id)
            if (
                job is None
                or job.provider != provider
                or not hmac.compare_digest((token or "").encode(), job.callback_token.encode())
            ):
                raise SignatureError("invalid_token", "the callback URL's token does not match a job")
        adapter.verify_webhook(headers, body, now=self._clock(), job=job)
        try:
            notice = adapter.parse_webhook(body)
        except (ValueError, KeyError, TypeError, RecursionError, msgspec.DecodeError) as exc:
            raise WebhookRejected(f"unreadable {provider} webhook body") from exc
        if job is None and notice.job_id is not None:
            # The callback names its job (Seedancee2's metadata): check and apply it in one write, unread.
            result = await self._apply(provider, adapter, notice, notice.job_id)
            if result is not None:
                return result
        if job is None:
            job = await self._store.find_job_by_task(provider, notice.provider_task_id)
        if job is not None:
            result = await self._apply(provider, adapter, notice, job.id, known=job)
            if result is not None:  # else it went away meanwhile (pruned)
                return result
        log.warning("webhook.unknown_task", provider=provider)
        return "ignored"

    async def _apply(
        self,
        provider: str,
        adapter: ProviderAdapter,
        notice: WebhookNotice,
        job_id: str,
        known: JobRecord | None = None,
    ) -> str | None:
        """Apply a callback to the job it concerns, checked in the same transaction as the change.

        Returns what happened, or None when no job of this provider has that id. The receipt is recorded only
        when the callback is applied: a declined one writes nothing.
        """

        def check(job: JobRecord) -> str | None:
            """Why the callback must leave `job` as it is, if it must."""
            if job.provider != provider:
                return _OTHER_PROVIDER
            if job.provider_task_id and job.provider_task_id != notice.provider_task_id:
                return _OTHER_TASK
            if lifecycle.left_task(job, notice.provider_task_id):  # before the next candidate's task id is known
                return _OTHER_TASK
            if adapter.needs_confirmation(notice, job):
                return _UNCONFIRMED
            return None

        # A failure may move a job on a route to its next candidate (retry_failed), chosen before the write.
        read = known
        if read is None and notice.report.status == "failed" and self._retries_failed:
            read = await self._store.get_job(job_id)
        apply = await self.report_decision(read, notice.report)

        def decide(job: JobRecord) -> Decision:
            reason = check(job)
            return apply(job) if reason is None else Declined(reason)

        # A job already read is checked first: a confirmation then starts no write it would undo.
        declined = None if known is None else check(known)
        if declined is None:
            try:
                outcome = await self.update_job(
                    job_id, decide, receipt=Receipt(provider=provider, key=notice.receipt_key)
                )
            except JobNotFound:
                return None
            except TaskTaken as exc:  # a signed callback cannot move a task from the job that holds it
                log.warning(
                    "webhook.task_owned_by_another_job",
                    provider=provider,
                    provider_task_id=exc.provider_task_id,
                    job_id=job_id,
                    owner_job_id=exc.owner_job_id,
                )
                return "ignored"
            if outcome.declined is None:
                result = "duplicate" if outcome.duplicate else "applied" if outcome.changed else "stale"
                log.info(
                    "webhook.received", provider=provider, job_id=job_id, result=result, status=notice.report.status
                )
                return result
            declined = outcome.declined
        if declined == _OTHER_TASK:
            log.warning("webhook.task_mismatch", provider=provider, job_id=job_id)
            return "ignored"
        if declined == _UNCONFIRMED:
            return await self._confirm(provider, notice, job_id)
        return None  # _OTHER_PROVIDER: no job of this provider has that id

    async def _confirm(self, provider: str, notice: WebhookNotice, job_id: str) -> str:
        # No receipt: a confirmation only schedules a status check, and doing that twice is harmless.
        await self.update_job(job_id, lambda j: lifecycle.confirm_soon(j, now=self._clock()))
        self._signals.confirm.set()
        log.info("webhook.received", provider=provider, job_id=job_id, result="confirming", status=notice.report.status)
        return "confirming"


def _whole_seconds(header: str, limit: float) -> int:
    """The `Cancel-After` header's seconds, checked like `deadline_seconds`."""
    text = header.strip()
    return _check_seconds(int(text) if _WHOLE_SECONDS.fullmatch(text) else None, "Cancel-After", limit)


def _check_seconds(seconds: int | None, field: str, limit: float) -> int:
    """A job deadline in whole seconds, from 1 to the operator's REELAY_JOB_TIMEOUT_SECONDS; else a 400."""
    most = int(limit)
    if seconds is None or not 1 <= seconds <= most:
        raise InvalidRequest(
            f"{field}: must be a whole number of seconds from 1 to {most}",
            details={"field": field, "min": 1, "max": most},
        )
    return seconds


def idempotency_hash(request: JobCreate, cancel_after: int | None) -> str:
    """What an Idempotency-Key is held with: the body, and `Cancel-After`, which changes the job as much."""
    body: dict[str, Any] = msgspec.to_builtins(request)
    if body["deadline_seconds"] is None:
        del body["deadline_seconds"]  # a body without it hashes as it did before the field existed
    if cancel_after is not None:
        body["Cancel-After"] = cancel_after  # not a body field name, so it cannot collide with one
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()
