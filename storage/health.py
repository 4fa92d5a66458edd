"""Provider health (circuit breakers) in storage, written once for both backends over the small SQL interface of
`storage.webhooks` (`Sql`, `Reader`).

One row per provider, created by its first counted failure: no row reads as a closed circuit with no failures.
Every change is one transaction on the shared database, so replicas agree and the state outlives any process.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import msgspec

from storage.webhooks import Reader, Sql

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

_T = TypeVar("_T")


class ProviderHealthRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's circuit. Times are unix seconds."""

    provider: str
    state: str = CLOSED
    failures: int = 0  # consecutive counted failures
    opened_at: float | None = None  # when it last opened: with `open_until`, the cool-down a failed probe doubles
    open_until: float | None = None
    probe_owner: str | None = None  # the process whose create is the half-open probe
    probe_until: float | None = None  # that probe's lease: past it, another process may probe
    last_error: str | None = None
    last_error_at: float | None = None
    updated_at: float | None = None


class CircuitPolicy(msgspec.Struct, frozen=True, kw_only=True):
    threshold: int  # consecutive counted failures that open the circuit
    cooldown: float  # seconds open after the threshold is reached
    max_cooldown: float  # cap of the cool-down, doubled by each failed probe


_FIELDS = tuple(ProviderHealthRecord.__struct_fields__)
_COLUMNS = ", ".join(_FIELDS)
_SELECT = f"SELECT {_COLUMNS} FROM provider_health"
_UPDATE = (
    "UPDATE provider_health SET "
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_FIELDS[1:], start=2))
    + " WHERE provider = $1"
)
# Only an open circuit past its cool-down, or a probe whose lease ran out, can be taken: one winner, whoever asks.
_CLAIM_PROBE = (
    "UPDATE provider_health SET state = 'half_open', probe_owner = $2, probe_until = $3, updated_at = $4 "
    "WHERE provider = $1 AND ((state = 'open' AND open_until <= $4) OR (state = 'half_open' AND probe_until <= $4))"
)
# A probe that sent no create is given back: open again past its cool-down, so the next create is the probe.
_RELEASE_PROBE = (
    "UPDATE provider_health SET state = 'open', probe_owner = NULL, probe_until = NULL, updated_at = $4 "
    "WHERE provider = $1 AND state = 'half_open' AND probe_owner = $2 AND probe_until = $3"
)
_IN_FLIGHT = "SELECT provider, count(*) FROM jobs WHERE stage < 3 GROUP BY provider"  # index jobs_in_flight


def _record(row: Any) -> ProviderHealthRecord:
    return ProviderHealthRecord(**dict(zip(_FIELDS, row, strict=True)))


def after_outcome(
    row: ProviderHealthRecord, *, failed: bool, owner: str, error: str | None, now: float, policy: CircuitPolicy
) -> ProviderHealthRecord:
    """The circuit after one create: a success (or an answer that says nothing of the provider's health) closes it;
    a counted failure counts, opens a closed circuit at the threshold, and re-opens it for twice the last cool-down
    (up to the cap) when it was this owner's probe."""
    if not failed:
        cleared = {"opened_at": None, "open_until": None, "probe_owner": None, "probe_until": None}
        return msgspec.structs.replace(row, state=CLOSED, failures=0, updated_at=now, **cleared)
    counted = msgspec.structs.replace(
        row, failures=row.failures + 1, last_error=error, last_error_at=now, updated_at=now
    )
    if row.state == HALF_OPEN and row.probe_owner == owner:
        last = policy.cooldown
        if row.open_until is not None and row.opened_at is not None:
            last = max(row.open_until - row.opened_at, policy.cooldown)
        cooldown = min(last * 2, policy.max_cooldown)
        return msgspec.structs.replace(
            counted, state=OPEN, opened_at=now, open_until=now + cooldown, probe_owner=None, probe_until=None
        )
    if row.state == CLOSED and counted.failures >= policy.threshold:
        return msgspec.structs.replace(counted, state=OPEN, opened_at=now, open_until=now + policy.cooldown)
    return counted  # already open, or another process's probe is out: counted, nothing else changes


async def read_all(db: Reader) -> list[ProviderHealthRecord]:
    return [_record(row) for row in await db.fetch(f"{_SELECT} ORDER BY provider")]


async def record_outcome(
    db: Sql, provider: str, *, failed: bool, owner: str, error: str | None, now: float, policy: CircuitPolicy
) -> ProviderHealthRecord:
    """Apply one create's outcome under the row's lock (inserted first if missing) and return the new state."""
    await db.execute(
        "INSERT INTO provider_health (provider, state, failures, updated_at) VALUES ($1, 'closed', 0, $2) "
        "ON CONFLICT (provider) DO NOTHING",
        provider,
        now,
    )
    rows = await db.fetch(f"{_SELECT} WHERE provider = $1{db.lock}", provider)
    new = after_outcome(_record(rows[0]), failed=failed, owner=owner, error=error, now=now, policy=policy)
    await db.execute(_UPDATE, *(getattr(new, name) for name in _FIELDS))
    return new


async def claim_probe(db: Sql, provider: str, *, owner: str, now: float, lease_seconds: float) -> bool:
    return await db.execute(_CLAIM_PROBE, provider, owner, now + lease_seconds, now) == 1


async def release_probe(db: Sql, provider: str, *, owner: str, probe_until: float, now: float) -> bool:
    return await db.execute(_RELEASE_PROBE, provider, owner, probe_until, now) == 1


async def jobs_in_flight(db: Reader) -> dict[str, int]:
    return {str(provider): int(count) for provider, count in await db.fetch(_IN_FLIGHT)}


async def oldest_due_polls(db: Reader, providers: Sequence[str]) -> dict[str, float]:
    oldest = {}
    for provider in providers:  # one index probe each (jobs_poll_by_provider), never a scan
        rows = await db.fetch(
            "SELECT min(next_poll_at) FROM jobs WHERE provider = $1 AND stage IN (1, 2) AND next_poll_at IS NOT NULL",
            provider,
        )
        if rows and rows[0][0] is not None:
            oldest[provider] = float(rows[0][0])
    return oldest


class HealthMethods:
    """The Store's provider-health methods, the same on both backends (see `storage.webhooks.WebhookMethods`)."""

    async def _hook(self, operation: Callable[[Sql], Coroutine[Any, Any, _T]]) -> _T:
        raise NotImplementedError

    async def _look(self, read: Callable[[Reader], Coroutine[Any, Any, _T]]) -> _T:
        raise NotImplementedError

    async def provider_health(self) -> list[ProviderHealthRecord]:
        return await self._look(read_all)

    async def record_provider_outcome(
        self, provider: str, *, failed: bool, owner: str, error: str | None, now: float, policy: CircuitPolicy
    ) -> ProviderHealthRecord:
        return await self._hook(
            lambda db: record_outcome(db, provider, failed=failed, owner=owner, error=error, now=now, policy=policy)
        )

    async def claim_provider_probe(self, provider: str, *, owner: str, now: float, lease_seconds: float) -> bool:
        return await self._hook(lambda db: claim_probe(db, provider, owner=owner, now=now, lease_seconds=lease_seconds))

    async def release_provider_probe(self, provider: str, *, owner: str, probe_until: float, now: float) -> bool:
        return await self._hook(lambda db: release_probe(db, provider, owner=owner, probe_until=probe_until, now=now))

    async def jobs_in_flight(self) -> dict[str, int]:
        return await self._look(jobs_in_flight)

    async def oldest_due_polls(self, providers: Sequence[str]) -> dict[str, float]:
        return await self._look(lambda db: oldest_due_polls(db, providers))
