"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    webhooks: Counter
    sse_subscribers: Gauge

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
        )
