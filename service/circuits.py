"""Provider health as the dispatcher sees it: may a create go to this provider now, and how did one go.

The dispatcher asks `admit` before every upstream create and reports each create's outcome with `record`.
`Circuits` is the implementation the service runs (consecutive failures open a provider's circuit for a cool-down,
then one create is let through as a half-open probe; the state lives in the store, so every replica shares it and
it survives a restart). `AlwaysClosed` admits everything and remembers nothing: for tests of other parts.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to "may a create go to this provider now?"."""

    allowed: bool
    # When not allowed: the earliest time to ask again (the end of the cool-down, or of another replica's probe).
    retry_at: float | None = None
    # Allowed as the half-open probe: this create's outcome closes the circuit or opens it again.
    probe: bool = False


ADMITTED = Admission(allowed=True)


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


class AlwaysClosed:
    """Admits every create and records nothing."""

    async def admit(self, provider: str, now: float) -> Admission:
        return ADMITTED

    async def record(
        self, provider: str, *, ok: bool, counts: bool, latency: float, error: str | None, now: float
    ) -> None:
        return None
