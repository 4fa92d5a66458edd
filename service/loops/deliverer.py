"""The deliverer: sends caller webhook deliveries, each in its own task, and records each attempt.

Claims are leased like jobs (SKIP LOCKED on PostgreSQL), at most `webhook_endpoint_concurrency` in flight to one
receiver and `webhook_concurrency` in all, so a slow or dead receiver holds its own slots and never another's.
Attempts are written back in batches (`finish_attempts`), as many as finished while the previous batch was
written. A delivery whose attempt is never written back (a crash) is claimed again when its lease expires.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import structlog

from service import deliveries
from service.deliveries import BODY_KEPT, Reply
from service.egress import GuardedResolver, Resolver, check_target, system_resolver
from service.loops.base import finish_within
from storage import AttemptResult, ClaimedDelivery, DeliveryStatus, StorageError

if TYPE_CHECKING:
    from service.gateway import Gateway
    from service.runtime import Runtime

log = structlog.get_logger("reelay.webhooks")

_OUTCOMES = {DeliveryStatus.SUCCEEDED: "succeeded", DeliveryStatus.PENDING: "retrying", DeliveryStatus.FAILED: "failed"}


class Deliverer:
    """Claims due deliveries, sends each once per claim, and writes the attempts back in batches."""

    name = "deliver"
    idle_seconds = 0.5  # how long an idle deliverer waits for a wake-up before it looks again (other replicas' work)
    explore_seconds = 0.25  # a receiver hidden behind full ones' backlogs waits at most about this long
    counts_seconds = 5.0  # how often the pending and disabled gauges are refreshed from the database
    max_batch = 500  # attempts written back in one transaction at most

    def __init__(self, runtime: Runtime, gateway: Gateway, *, resolve: Resolver = system_resolver) -> None:
        settings = runtime.settings
        self.store = runtime.store
        self.clock = runtime.clock
        self.metrics = runtime.metrics
        self.lease_seconds = settings.lease_seconds
        self.schedule = settings.webhook_retry_schedule
        self.timeout = settings.webhook_timeout_seconds
        self.per_target = settings.webhook_endpoint_concurrency
        self.concurrency = settings.webhook_concurrency
        self.disable_after = settings.webhook_disable_after_seconds
        self._wake = runtime.signals.deliveries
        # aiohttp rather than the httpx client the providers' calls use: an attempt costs about a tenth of the CPU
        # (bench/RESULTS.md), and draining a backlog is bound by it. Its own pool: receivers are not providers.
        self.sender = WebhookSender(
            allow_private=settings.webhook_allow_private,
            resolve=resolve,
            timeout=self.timeout,
            connections=self.concurrency,
        )
        self._freed = asyncio.Event()  # an attempt ended: its receiver has room again
        self._explored = -float("inf")  # monotonic time of the last claim that searched past full receivers
        self._inflight: set[asyncio.Task[None]] = set()
        self._busy: Counter[str] = Counter()  # target -> attempts in flight here
        self._results: list[tuple[AttemptResult, str | None]] = []  # with the endpoint id, if any
        self._results_ready = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._writer = self._writer or asyncio.create_task(self._write_results(), name="deliver.write")
        counts = asyncio.create_task(self._refresh_counts(), name="deliver.counts")
        try:
            while True:
                free = self.concurrency - len(self._inflight)
                claimed: list[ClaimedDelivery] = []
                if free > 0:
                    # A claim for a freed slot reads only the oldest due deliveries. One after new deliveries, or
                    # now and then, searches past the full receivers' backlogs for anyone else's.
                    explore = self._wake.is_set() or time.monotonic() - self._explored >= self.explore_seconds
                    if explore:
                        self._explored = time.monotonic()
                    self._wake.clear()  # before the claim: a wake-up during it is not lost
                    self._freed.clear()
                    try:
                        claimed = await self.store.claim_deliveries(
                            self.clock(),
                            free,
                            self.lease_seconds,
                            per_target=self.per_target,
                            busy=dict(self._busy),
                            explore=explore,
                        )
                    except StorageError as exc:
                        log.error("deliver.claim_failed", error=str(exc))
                for item in claimed:
                    self._busy[item.delivery.target] += 1
                    task = asyncio.create_task(self._send(item))
                    self._inflight.add(task)
                    task.add_done_callback(functools.partial(self._done, item.delivery.target))
                if claimed and len(claimed) == free:
                    continue  # there may be more due right now
                await self._next_wake()
        finally:
            counts.cancel()

    async def _next_wake(self) -> None:
        """Wait for new deliveries, a freed slot, or `idle_seconds`, whichever comes first."""
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._freed.wait())]
        try:
            await asyncio.wait(waits, timeout=self.idle_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _done(self, target: str, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._busy[target] -= 1
        if self._busy[target] <= 0:
            del self._busy[target]
        # A slot is free, and a cap may have held due deliveries back: claim again (one claim for every
        # attempt that ends while the previous claim runs).
        self._freed.set()

    async def _send(self, claimed: ClaimedDelivery) -> None:
        delivery = claimed.delivery
        at = self.clock()
        started = time.perf_counter()
        reply: Reply | None = None
        error: str | None = None
        try:
            payload = deliveries.body(claimed)
            async with asyncio.timeout(self.timeout):  # the whole attempt, however slowly the answer trickles
                reply = await self.sender.post(claimed.url, payload, deliveries.headers(claimed, payload, at))
        except asyncio.CancelledError:
            raise  # shutdown: the lease is released and the delivery sent again later
        except Exception as exc:
            error = deliveries.describe_error(exc, self.timeout)
        duration = time.perf_counter() - started
        result = deliveries.decide(delivery, self.schedule, at=at, duration=duration, reply=reply, error=error)
        outcome = _OUTCOMES[result.status]
        self.metrics.webhook_deliveries.labels(outcome=outcome).inc()
        self.metrics.webhook_attempt_seconds.labels(outcome=outcome).observe(duration)
        emit = log.info if result.status == DeliveryStatus.SUCCEEDED else log.warning
        emit(
            "webhook.attempt",
            delivery_id=delivery.id,
            job_id=delivery.job_id,
            endpoint_id=delivery.endpoint_id,
            event_type=delivery.event_type,
            host=urlsplit(claimed.url).hostname,
            status=result.attempt.status_code,
            duration_ms=round(duration * 1000, 1),
            attempt=delivery.attempts + 1,
            outcome=outcome,
            error=result.attempt.error,
        )
        self._results.append((result, delivery.endpoint_id))
        self._results_ready.set()

    async def _write_results(self) -> None:
        """Write finished attempts back, each batch as many as finished while the previous one was written."""
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            while self._results:
                batch, self._results = self._results[: self.max_batch], self._results[self.max_batch :]
                await self._finish(batch)
            if self._closing:
                return

    async def _finish(self, batch: list[tuple[AttemptResult, str | None]]) -> None:
        try:
            disabled = await self.store.finish_attempts([r for r, _ in batch], disable_after_seconds=self.disable_after)
        except StorageError as exc:
            # Their leases expire and the deliveries are sent again: at least once, never lost.
            log.error("deliver.finish_failed", error=str(exc), attempts=len(batch))
            return
        except Exception:
            log.exception("deliver.finish_crashed", attempts=len(batch))
            return
        asked = {endpoint: r.disable_endpoint for r, endpoint in batch if r.disable_endpoint}
        for endpoint_id in disabled:
            log.warning("webhook.endpoint_disabled", endpoint_id=endpoint_id, reason=asked.get(endpoint_id, "failing"))

    async def _refresh_counts(self) -> None:
        while True:
            try:
                counts = await self.store.delivery_counts()
            except StorageError as exc:
                log.warning("deliver.counts_failed", error=str(exc))
            else:
                self.metrics.webhook_pending.set(counts.pending)
                self.metrics.webhook_endpoints_disabled.set(counts.disabled_endpoints)
            await asyncio.sleep(self.counts_seconds)

    async def drain(self, grace_seconds: float) -> None:
        """Let attempts in flight finish within `grace_seconds` (the rest are cancelled, their leases released by
        the lifespan), write back every finished one, then close the client."""
        await finish_within(self._inflight, grace_seconds, "deliver")
        self._closing = True
        self._results_ready.set()
        if self._writer is not None:
            await self._writer
        elif self._results:
            await self._finish(self._results)
        await self.sender.close()


class WebhookSender:
    """Sends one attempt to a receiver through the address guard, and keeps the first KB of the answer."""

    def __init__(self, *, allow_private: bool, resolve: Resolver, timeout: float, connections: int) -> None:
        self._allow_private = allow_private
        self._resolver = GuardedResolver(allow_private=allow_private, resolve=resolve)
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, payload: bytes, headers: dict[str, str]) -> Reply:
        """POST `payload`; raises what went wrong when no answer came (see `deliveries.describe_error`)."""
        check_target(url, allow_private=self._allow_private)  # an IP literal never reaches the resolver
        async with self._client().post(url, data=payload, headers=headers, allow_redirects=False) as response:
            kept = bytearray()
            while len(kept) < BODY_KEPT and (chunk := await response.content.read(BODY_KEPT - len(kept))):
                kept += chunk
            # Leaving with the body unread closes the connection rather than reading the rest.
            return Reply(
                status_code=response.status,
                body=bytes(kept),
                location=response.headers.get("location"),
                retry_after=response.headers.get("retry-after"),
            )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # As many connections as attempts in flight, so no attempt ever waits for one.
                connector=aiohttp.TCPConnector(limit=self._connections, limit_per_host=0, resolver=self._resolver),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                cookie_jar=aiohttp.DummyCookieJar(),  # one receiver's cookies are never sent to another
                auto_decompress=False,
                trust_env=False,  # never a proxy: it would resolve names out of the guard's sight
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
