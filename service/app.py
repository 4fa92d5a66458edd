"""`create_app(settings)`: the Litestar application, and its lifespan, which builds the runtime and runs the loops."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Literal

import httpx
import structlog
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from service.api.content import job_content
from service.api.context import AppContext, close_revoked_streams
from service.api.dashboard import dashboard_routes
from service.api.docs import swagger_assets, swagger_plugin
from service.api.endpoints import WebhookController
from service.api.errors import handle_exception
from service.api.events import all_events, job_events
from service.api.jobs import JobController
from service.api.limits import key_limits
from service.api.middleware import RequestContextMiddleware, add_security_headers
from service.api.models import list_models
from service.api.ops import healthz, job_webhook, metrics, provider_webhook, readyz
from service.api.providers import list_providers
from service.api.sessions import SECRET_NAME, Sessions
from service.api.tokens import create_stream_token
from service.api.usage import usage
from service.assets import AssetStore, AssetUrls
from service.assets.store import open_assets
from service.circuits import Circuits, ProviderHealth
from service.egress import Resolver, system_resolver
from service.endpoints import Endpoints
from service.errors import ConfigError
from service.events import EventLog
from service.gateway import Gateway
from service.hub import EventHub
from service.ids import new_token
from service.loops import Archiver, Deliverer, Dispatcher, Loop, Poller, Watcher
from service.metrics import Metrics, watch_loop_lag
from service.providers import ADAPTERS, ProviderRegistry, all_models
from service.providers.base import ProviderAdapter
from service.rates import RateBudgets
from service.runtime import Runtime, Signals
from service.settings import Settings
from service.tokens import StreamTokens
from service.transport import AiohttpTransport
from service.wire import encode_job
from storage import EventRecord, StorageError, Store, create_store
from storage.health import CircuitPolicy

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

log = structlog.get_logger("reelay.app")

Role = Literal["all", "api", "worker"]


def enabled_adapters(
    settings: Settings, client: httpx.AsyncClient, adapters: ProviderRegistry = ADAPTERS
) -> dict[str, ProviderAdapter]:
    """An adapter for every registered provider that has an API key."""
    return {
        name: cls(settings.provider(name), client) for name, cls in adapters.items() if settings.provider(name).enabled
    }


def close_streams(app: Litestar) -> None:
    """On stop: end every SSE stream with a reconnect hint (nothing to do before start-up finished)."""
    ctx = getattr(app.state, "ctx", None)
    if ctx is not None:
        ctx.hub.close_all()


# What a browser client sends beside the CORS-safelisted headers, and the answer headers its scripts must read
# (a request id to quote, how long a 429 or 503 asks to wait, where an event stream resumes).
CORS_REQUEST_HEADERS = (
    "authorization",
    "x-api-key",
    "content-type",
    "idempotency-key",
    "cancel-after",
    "last-event-id",
    "x-request-id",
)
CORS_EXPOSED_HEADERS = ("x-request-id", "retry-after", "last-event-id")


def cors_config(origins: Sequence[str]) -> CORSConfig:
    return CORSConfig(
        allow_origins=list(origins), allow_headers=list(CORS_REQUEST_HEADERS), expose_headers=list(CORS_EXPOSED_HEADERS)
    )


def _wake_deliverer(runtime: Runtime, events: Sequence[EventRecord]) -> None:
    """Store listener: committed events that recorded deliveries wake the deliverer (they are due now)."""
    if any(event.deliveries for event in events):
        runtime.signals.deliveries.set()
    if any(event.type == "job.succeeded" for event in events):
        runtime.signals.archives.set()  # its outputs are queued for copying (storage.archives)


async def _open_assets(settings: Settings, store: Store) -> tuple[AssetStore | None, AssetUrls]:
    """The asset store (None: REELAY_ASSETS=off) and the signer of asset URLs, whose secret is
    REELAY_ASSET_URL_SECRET or else one the database keeps for every replica."""
    secret = settings.asset_url_secret or await store.server_secret("asset_urls", new_value=secrets.token_urlsafe(32))
    return open_assets(settings), AssetUrls(secret.encode(), settings.public_url, settings.asset_url_ttl_seconds)


def create_app(
    settings: Settings,
    *,
    adapters: ProviderRegistry = ADAPTERS,
    http_client: httpx.AsyncClient | None = None,
    store: Store | None = None,
    clock: Callable[[], float] | None = None,
    role: Role = "all",
    webhook_resolve: Resolver = system_resolver,
    health: ProviderHealth | None = None,
) -> Litestar:
    """Build the application for a role. Nothing is opened until the app starts (lifespan).

    `api` serves HTTP without background work, `worker` runs the dispatcher and poller and serves only
    the probes and metrics, `all` does both. `adapters` are the providers it knows (their settings come from
    `settings.providers`). `webhook_resolve` resolves the hosts of callers' webhook receivers (tests stand in DNS);
    `health`, when given, stands in for provider health (tests of what an open circuit does).
    """
    if role != "all" and settings.database_url.startswith("sqlite"):
        # Events committed in one process never reach another process's SSE subscribers on SQLite.
        raise ConfigError(
            f"--role {role} needs PostgreSQL (REELAY_DATABASE_URL=postgresql://...); SQLite runs as one process"
        )
    run_workers = role in ("all", "worker")
    app_metrics = Metrics.create()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        the_store = store or create_store(
            settings.database_url,
            encode_job,
            clock=clock or time.time,
            sqlite_synchronous=settings.sqlite_synchronous,
            first_delivery_delay=settings.webhook_retry_schedule[0],
            archive=settings.assets != "off",
        )
        await the_store.open()
        if run_workers:
            await the_store.release_leases()  # this worker's leases left by a crash (all of them on SQLite)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        client = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout_seconds, connect=10.0),
            limits=limits,
            transport=AiohttpTransport(limits=limits),  # httpx's API on aiohttp: a third of the CPU per request
        )
        hub = EventHub(settings.sse_queue_size)
        the_store.add_listener(hub.publish)
        signals = Signals()
        models = all_models(adapters)
        circuits = health or Circuits(
            the_store,
            CircuitPolicy(
                threshold=settings.circuit_failures,
                cooldown=settings.circuit_cooldown_seconds,
                max_cooldown=settings.circuit_max_cooldown_seconds,
            ),
            # A probe outlasts its create; a probe whose process died is taken again after this.
            probe_lease_seconds=settings.upstream_timeout_seconds + 5.0,
            wake=signals.new_job.set,
            metrics=app_metrics,
            monotonic=time.monotonic,
            providers=sorted({spec.provider for spec in models.values()}),
        )
        assets, asset_urls = await _open_assets(settings, the_store)
        runtime = Runtime(
            settings=settings,
            store=the_store,
            adapters=enabled_adapters(settings, client, adapters),
            models=models,
            http=client,
            hub=hub,
            clock=clock or time.time,  # the one place the wall clock is chosen
            monotonic=time.monotonic,
            rng=random.Random(),
            metrics=app_metrics,
            signals=signals,
            health=circuits,
            rates=RateBudgets({name: p.rate_limit for name, p in settings.providers.items()}, the_store),
            assets=assets,
            asset_urls=asset_urls,
        )
        gateway = Gateway(runtime)
        the_store.add_listener(lambda events: _wake_deliverer(runtime, events))
        ctx = app.state.ctx = AppContext(
            settings=settings,
            gateway=gateway,
            events=EventLog(runtime),
            endpoints=Endpoints(runtime),
            hub=hub,
            registry=app_metrics.registry,
            limits=key_limits(
                the_store,
                rate=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
                max_streams=settings.sse_max_per_key,
                ttl=settings.stream_slot_ttl_seconds,
                clock=runtime.monotonic,
            ),
            rng=runtime.rng,
            monotonic=runtime.monotonic,
            sessions=Sessions(
                await the_store.server_secret(SECRET_NAME, new_value=new_token()),
                settings.dashboard_session_seconds,
                runtime.clock,
            ),
            # One secret for every replica, so a token one replica signed opens a stream on any other.
            stream_tokens=StreamTokens(
                await the_store.server_secret("stream_tokens", new_value=secrets.token_urlsafe(32)), runtime.clock
            ),
            asset_store=assets,
            asset_urls=asset_urls,
            clock=runtime.clock,
        )
        # Every background loop: started here, cancelled on stop, then drained (a new loop joins this list).
        loops: list[Loop] = [Watcher("loop_lag", lambda: watch_loop_lag(app_metrics.loop_lag))]
        if run_workers:
            loops += [
                Dispatcher(runtime, gateway),
                Poller(runtime, gateway),
                Deliverer(runtime, gateway, resolve=webhook_resolve),
            ]
            if assets is not None:
                loops.append(Archiver(runtime, gateway, resolve=webhook_resolve))
        if role != "worker":
            loops.append(Watcher("revoked_keys", lambda: close_revoked_streams(ctx)))
            loops.append(Watcher("stream_slots", ctx.limits.keep))
        tasks = [asyncio.create_task(loop.run(), name=loop.name) for loop in loops]
        log.info("reelay.started", providers=sorted(runtime.adapters), database=settings.database_url.split("://")[0])
        try:
            yield
        finally:
            hub.close_all()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # In-flight creates and polls get a bounded time to finish; the rest are cancelled and their
            # leases released, so the next start (or another worker) takes them over.
            for loop in loops:
                await loop.drain(settings.shutdown_drain_seconds)
            with contextlib.suppress(StorageError):
                await the_store.release_leases()
            await ctx.limits.close()
            if assets is not None:
                await assets.close()
            if http_client is None:
                await client.aclose()
            if store is None:
                await the_store.close()
            log.info("reelay.stopped")

    api: list[ControllerRouterHandler] = (
        []
        if role == "worker"
        else [
            JobController,
            job_content,
            WebhookController,
            all_events,
            job_events,
            create_stream_token,
            list_models,
            list_providers,
            usage,
            provider_webhook,
            job_webhook,
            *dashboard_routes(),
        ]
    )
    app = Litestar(
        # swagger_assets: /schema/swagger's code, served wherever /schema is.
        route_handlers=[*api, healthz, readyz, metrics, swagger_assets()],
        lifespan=[lifespan],
        exception_handlers={Exception: handle_exception},
        middleware=[RequestContextMiddleware(settings.body_timeout_seconds)],
        before_send=[add_security_headers],
        # Off unless REELAY_CORS_ORIGINS names the browser origins allowed to call the API.
        cors_config=cors_config(settings.cors_origins) if settings.cors_origins else None,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Reelay",
            version="0.1.0",
            path="/schema",
            description="Job gateway for asynchronous AI video generation.",
            # /schema itself is the JSON document (a contract); the UI is at /schema/swagger. No other UI:
            # Litestar's others load their code from CDNs.
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), swagger_plugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="Reelay API key"),
                    "apiKey": SecurityScheme(type="apiKey", name="x-api-key", security_scheme_in="header"),
                    "streamToken": SecurityScheme(
                        type="apiKey",
                        name="token",
                        security_scheme_in="query",
                        description="a stream token (POST /v1/stream-tokens); only the two event streams take it",
                    ),
                }
            ),
        ),
        debug=False,
        logging_config=None,  # configure_logging() owns logging for the whole process
    )
    app.state.metrics = app_metrics
    return app
