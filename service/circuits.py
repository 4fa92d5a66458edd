"""Provider health as the dispatcher sees it: may a create go to this provider now, and how did one go.

The dispatcher asks `admit` before every upstream create and reports each create's outcome with `record`.
`Circuits` is the implementation the service runs (consecutive failures open a provider's circuit for a cool-down,
then one create is let through as a half-open probe; the state lives in the store, so every replica shares it and
it survives a restart). `AlwaysClosed` admits everything and remembers nothing: for tests of other parts.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import msgspec
import structlog

from storage.errors import StorageError
from storage.health import CLOSED, HALF_OPEN, OPEN, CircuitPolicy, ProviderHealthRecord

if TYPE_CHECKING:
    from service.metrics import Metrics
    from storage import Store

log = structlog.get_logger("reelay.circuits")


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to "may a create go to this provider now?"."""

    allowed: bool
    # When not allowed: the earliest time to ask again (the end of the cool-down, or of another replica's probe).
    retry_at: float | None = None
    # Allowed as the half-open probe: this create's outcome closes the circuit or opens it again.
    probe: bool = False
    probe_until: float | None = None  # the probe's lease (it names this probe when it is given back)


ADMITTED = Admission(allowed=True)


class ProviderView(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's health as GET /v1/providers shows it: its circuit (shared by every replica) and this process's
    recent creates. Times in unix seconds, latencies in seconds."""

    state: str = CLOSED
    failures: int = 0
    open_until: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    error_rate: float | None = None  # counted failures among the recent creates; None without any
    latency_p50: float | None = None
    latency_p99: float | None = None


class ProviderHealth(Protocol):
    async def admit(self, provider: str, now: float) -> Admission:
        """Whether a create may go to `provider` now (closed circuit, or this caller won the half-open probe)."""

    async def record(
        self, provider: str, *, ok: bool, counts: bool, latency: float, error: str | None, now: float
    ) -> None:
        """One create's outcome. `ok`: the provider accepted it. `counts`: a failure that speaks of the provider's
        health (a 5xx, 429, connection error, timeout, lost answer, or a refusal of the account: 401, 402, 403),
        not of the job's input (a 400 naming a field). `latency` in seconds; `error` in words, for GET
        /v1/providers."""

    async def release(self, provider: str, admission: Admission, now: float) -> None:
        """After a create `admission` allowed: give its probe back unless its outcome was recorded (the dispatcher
        may send nothing, e.g. a lookup finds the task), so the circuit is not held until the probe's lease ends."""

    async def view(self, now: float) -> dict[str, ProviderView]:
        """Each provider's health as known now; a provider left out has a closed circuit and no recent creates."""


class AlwaysClosed:
    """Admits every create and records nothing."""

    async def admit(self, provider: str, now: float) -> Admission:
        return ADMITTED

    async def record(
        self, provider: str, *, ok: bool, counts: bool, latency: float, error: str | None, now: float
    ) -> None:
        return None

    async def release(self, provider: str, admission: Admission, now: float) -> None:
        return None

    async def view(self, now: float) -> dict[str, ProviderView]:
        return {}


class _Recent:
    """This process's last creates to one provider: (when, counted failure, latency), within a window."""

    size = 200
    window_seconds = 300.0

    def __init__(self) -> None:
        self._creates: deque[tuple[float, bool, float]] = deque(maxlen=self.size)

    def add(self, now: float, failed: bool, latency: float) -> None:
        self._creates.append((now, failed, latency))

    def summary(self, now: float) -> tuple[float | None, float | None, float | None]:
        """(error rate, p50, p99) of the creates of the last `window_seconds`; None where there are none."""
        recent = [c for c in self._creates if c[0] >= now - self.window_seconds]
        if not recent:
            return None, None, None
        latencies = sorted(latency for _, _, latency in recent)
        rate = sum(failed for _, failed, _ in recent) / len(recent)
        return rate, _rank(latencies, 0.5), _rank(latencies, 0.99)


def _rank(ordered: list[float], quantile: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(len(ordered) * quantile) - 1)]


_GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class Circuits:
    """Circuit breakers per provider, kept in the store (`storage.health`) so replicas share them and a restart
    keeps them, with a copy in memory so a closed circuit admits a create without a query."""

    refresh_seconds = 0.5  # how old this process's copy of the circuits may be before `admit` reads them again
    # While another create is the probe, waiting jobs ask again this soon: they go out soon after it closes.
    probe_wait_seconds = 1.0

    def __init__(
        self,
        store: Store,
        policy: CircuitPolicy,
        *,
        probe_lease_seconds: float,
        wake: Callable[[], None],
        metrics: Metrics,
        monotonic: Callable[[], float],
        providers: Iterable[str] = (),
    ) -> None:
        self._store = store
        self._policy = policy
        self._probe_lease = probe_lease_seconds
        self._wake = wake
        self._metrics = metrics
        self._monotonic = monotonic
        self._rows: dict[str, ProviderHealthRecord] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()
        self._recent: dict[str, _Recent] = {}
        # Unique per instance, like a store's lease owner: a probe is recognised by the process that claimed it.
        self.owner = f"{socket.gethostname()[:24]}/{os.getpid()}/{secrets.token_hex(4)}"
        for provider in providers:
            metrics.provider_circuit_state.labels(provider=provider).set(0)

    async def admit(self, provider: str, now: float) -> Admission:
        if self._monotonic() - self._read_at >= self.refresh_seconds:
            await self._refresh(self.refresh_seconds)
        old = self._rows.get(provider)
        verdict = self._verdict(old, now)
        if verdict is not None:
            return verdict
        if await self._store.claim_provider_probe(provider, owner=self.owner, now=now, lease_seconds=self._probe_lease):
            until = now + self._probe_lease
            probing = {"state": HALF_OPEN, "probe_owner": self.owner, "probe_until": until}
            self._remember(old, msgspec.structs.replace(old or ProviderHealthRecord(provider=provider), **probing))
            log.info("circuit.probe", provider=provider)
            return Admission(allowed=True, probe=True, probe_until=until)
        await self._refresh(0.0)  # another process took the probe, or changed the circuit: read what it did
        verdict = self._verdict(self._rows.get(provider), now)
        return verdict or Admission(allowed=False, retry_at=now + self.probe_wait_seconds)

    def _verdict(self, row: ProviderHealthRecord | None, now: float) -> Admission | None:
        """The answer the circuit gives without a write; None when this caller may try to take the probe."""
        if row is None or row.state == CLOSED:
            return ADMITTED
        if row.state == OPEN and row.open_until is not None and now < row.open_until:
            return Admission(allowed=False, retry_at=row.open_until)
        if row.state == HALF_OPEN and row.probe_until is not None and now < row.probe_until:
            return Admission(allowed=False, retry_at=min(row.probe_until, now + self.probe_wait_seconds))
        return None

    async def record(
        self, provider: str, *, ok: bool, counts: bool, latency: float, error: str | None, now: float
    ) -> None:
        failed = not ok and counts
        self._recent.setdefault(provider, _Recent()).add(now, failed, latency)
        if failed:
            self._metrics.provider_create_errors.labels(provider=provider).inc()
        old = self._rows.get(provider)
        if not failed and (old is None or (old.state == CLOSED and old.failures == 0)):
            return  # the common case: nothing to change, so no write
        try:
            new = await self._store.record_provider_outcome(
                provider, failed=failed, owner=self.owner, error=error if failed else None, now=now, policy=self._policy
            )
        except StorageError as exc:  # never let health bookkeeping hide the create's own outcome
            log.error("circuit.record_failed", provider=provider, error=str(exc))
            return
        self._remember(old, new)

    async def release(self, provider: str, admission: Admission, now: float) -> None:
        if not admission.probe or admission.probe_until is None:
            return
        try:
            given_back = await self._store.release_provider_probe(
                provider, owner=self.owner, probe_until=admission.probe_until, now=now
            )
        except StorageError as exc:  # the probe's lease still ends it
            log.error("circuit.release_failed", provider=provider, error=str(exc))
            return
        if given_back:
            log.info("circuit.probe_released", provider=provider)
            self._read_at = float("-inf")  # read the circuit again at the next admit
            self._wake()  # a job waiting for this provider may take the probe now

    def _remember(self, old: ProviderHealthRecord | None, new: ProviderHealthRecord) -> None:
        self._rows[new.provider] = new
        self._metrics.provider_circuit_state.labels(provider=new.provider).set(_GAUGE[new.state])
        was = CLOSED if old is None else old.state
        if new.state == was:
            return
        if new.state == OPEN:
            log.warning("circuit.opened", provider=new.provider, failures=new.failures, open_until=new.open_until)
        elif new.state == CLOSED:
            log.info("circuit.closed", provider=new.provider)
            self._wake()  # jobs that waited for this provider may go now

    async def _refresh(self, max_age: float) -> None:
        """Read every circuit unless a read started at most `max_age` seconds before this call (one read at a time)."""
        asked = self._monotonic()
        async with self._lock:
            if asked - self._read_at < max_age or self._read_at > asked:
                return  # recent enough, or another caller read them while this one waited
            self._read_at = self._monotonic()
            try:
                rows = await self._store.provider_health()
            except StorageError as exc:  # keep deciding on the last copy; the next refresh tries again
                log.error("circuit.read_failed", error=str(exc))
                return
        for row in rows:
            self._remember(self._rows.get(row.provider), row)

    async def view(self, now: float) -> dict[str, ProviderView]:
        await self._refresh(0.0)
        views: dict[str, ProviderView] = {}
        for provider in sorted(set(self._rows) | set(self._recent)):
            row = self._rows.get(provider) or ProviderHealthRecord(provider=provider)
            rate, p50, p99 = self._recent[provider].summary(now) if provider in self._recent else (None, None, None)
            views[provider] = ProviderView(
                state=row.state,
                failures=row.failures,
                open_until=row.open_until if row.state != CLOSED else None,
                last_error=row.last_error,
                last_error_at=row.last_error_at,
                error_rate=rate,
                latency_p50=p50,
                latency_p99=p99,
            )
        return views
