"""The service's dependencies, built once by `create_app`'s lifespan and handed to the use cases and to every loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.circuits import AlwaysClosed, ProviderHealth

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping

    import httpx

    from service.assets import AssetStore, AssetUrls
    from service.hub import EventHub
    from service.metrics import Metrics
    from service.providers.base import ModelSpec, ProviderAdapter
    from service.rates import RateBudgets
    from service.schedule import Backoff
    from service.settings import Settings
    from storage import Store


@dataclass(frozen=True)
class Signals:
    """Wake-ups from the use cases to the loops, so new work starts now rather than at the loop's next idle check."""

    new_job: asyncio.Event = field(default_factory=asyncio.Event)  # a job was queued: the dispatcher
    confirm: asyncio.Event = field(default_factory=asyncio.Event)  # a callback asks for a status check: the poller
    # Deliveries are due now (an event recorded some, or a test, resend or recover): the deliverer.
    deliveries: asyncio.Event = field(default_factory=asyncio.Event)
    archives: asyncio.Event = field(default_factory=asyncio.Event)  # a job succeeded with outputs to copy: the archiver


@dataclass(frozen=True)
class Runtime:
    """Everything the use cases (`Gateway`, `EventLog`) and the loops share; nothing is added after construction."""

    settings: Settings
    store: Store
    adapters: Mapping[str, ProviderAdapter]  # the configured providers, by name
    models: Mapping[str, ModelSpec]  # every model, by id, whether its provider is configured or not
    http: httpx.AsyncClient  # the one client every upstream call goes through
    hub: EventHub  # committed events to this process's stream subscribers
    clock: Callable[[], float]  # unix time: deadlines, schedules, stored timestamps
    monotonic: Callable[[], float]  # intervals only (caches, rate limits): never goes back
    rng: random.Random  # jitter of retries, polls and heartbeats
    metrics: Metrics
    signals: Signals = field(default_factory=Signals)
    # Circuit breakers per provider: the dispatcher asks before each create and reports its outcome.
    health: ProviderHealth = field(default_factory=AlwaysClosed)
    # Per-provider rate budgets (REELAY_<PROVIDER>_RATE_LIMIT); None: every provider unlimited.
    rates: RateBudgets | None = None
    # The asset store (REELAY_ASSETS) and the signer of its URLs; None when REELAY_ASSETS=off.
    assets: AssetStore | None = None
    asset_urls: AssetUrls | None = None

    def poll_schedule(self, provider: str) -> Backoff:
        """How often a provider's jobs are checked: its REELAY_<PROVIDER>_POLL_* settings, else its adapter's own."""
        configured = self.settings.providers.get(provider)
        if configured is not None and configured.poll_schedule is not None:
            return configured.poll_schedule
        return self.adapters[provider].poll_schedule

    async def poll_delay(
        self, provider: str, attempt: int, rng: random.Random, *, at_least: float | None = None
    ) -> float:
        """Seconds until a job's next status check: its provider's cadence, and with a rate budget at least the
        job's share of it (jobs in flight / rate), so every job gets its turn and creates still go first."""
        spacing = 0.0 if self.rates is None else await self.rates.poll_spacing(provider)
        return self.poll_schedule(provider).delay(attempt, rng, at_least=at_least, spacing=spacing)
