"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    webhooks: Counter
    sse_subscribers: Gauge
    loop_lag: Histogram
    jobs_finished: Counter
    upstream_create: Histogram
    route_failovers: Counter
    webhook_deliveries: Counter
    webhook_attempt_seconds: Histogram
    webhook_pending: Gauge
    webhook_endpoints_disabled: Gauge
    provider_circuit_state: Gauge
    provider_create_errors: Counter
    assets_archived: Counter
    asset_bytes: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            requests=Counter(
                "reelay_http_requests",
                "HTTP requests by route and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "reelay_http_request_seconds",
                "HTTP request latency",
                ["route"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            ),
            webhooks=Counter(
                "reelay_webhooks", "Provider webhooks by outcome", ["provider", "result"], registry=registry
            ),
            sse_subscribers=Gauge("reelay_sse_subscribers", "Open SSE subscriptions", registry=registry),
            loop_lag=Histogram(
                "reelay_event_loop_lag_seconds",
                "How late the event loop ran a timer due every 10 ms (a stall blocks every request meanwhile)",
                registry=registry,
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            ),
            jobs_finished=Counter(
                "reelay_jobs_finished",
                "Jobs that reached a terminal status, counted by the process that made the change",
                ["model", "status"],
                registry=registry,
            ),
            upstream_create=Histogram(
                "reelay_upstream_create_seconds",
                "Provider create requests: latency by provider and outcome",
                ["provider", "outcome"],
                registry=registry,
                buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            ),
            route_failovers=Counter(
                "reelay_route_failovers",
                "Jobs moved from one candidate of a route to the next, by route and why the candidate was left",
                ["route", "reason"],
                registry=registry,
            ),
            webhook_deliveries=Counter(
                "reelay_webhook_deliveries",
                "Caller webhook attempts by what they left the delivery: succeeded, retrying or failed",
                ["outcome"],
                registry=registry,
            ),
            webhook_attempt_seconds=Histogram(
                "reelay_webhook_attempt_seconds",
                "Caller webhook attempts: latency by outcome",
                ["outcome"],
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
            ),
            webhook_pending=Gauge(
                "reelay_webhook_pending",
                "Caller webhook deliveries waiting to be sent, in the whole database (refreshed every few seconds)",
                registry=registry,
            ),
            webhook_endpoints_disabled=Gauge(
                "reelay_webhook_endpoints_disabled",
                "Disabled webhook endpoints, in the whole database (refreshed every few seconds)",
                registry=registry,
            ),
            provider_circuit_state=Gauge(
                "reelay_provider_circuit_state",
                "Each provider's circuit as this process last read it: 0 closed, 1 half-open (probing), 2 open",
                ["provider"],
                registry=registry,
            ),
            provider_create_errors=Counter(
                "reelay_provider_create_errors",
                "Failed creates that count against the provider's circuit (5xx, 429, connection errors, timeouts, "
                "lost answers, account refusals), by provider",
                ["provider"],
                registry=registry,
            ),
            assets_archived=Counter(
                "reelay_assets_archived",
                "Outputs copied into the asset store, by result: copied, or the archive_error code that ended it "
                "(too_large, content_type, private_address, expired, unreachable)",
                ["result"],
                registry=registry,
            ),
            asset_bytes=Counter(
                "reelay_asset_bytes", "Bytes of outputs copied into the asset store", registry=registry
            ),
        )


async def watch_loop_lag(histogram: Histogram, interval: float = 0.01) -> None:
    """Observe, forever, how much later than asked the event loop wakes a sleeping task."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - started - interval))
