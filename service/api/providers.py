"""`/v1/providers`: each provider's circuit, recent create errors and latency, jobs in flight, rate limit and how
far behind its polling is."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide

from service.api.context import authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY
from service.api.query import refuse_unknown_query
from service.timestamps import to_iso
from storage import ApiKeyRecord

Instant = Annotated[str | None, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class CreateLatency(msgspec.Struct):
    p50: Annotated[float | None, msgspec.Meta(description="milliseconds; null without recent creates")]
    p99: Annotated[float | None, msgspec.Meta(description="milliseconds; null without recent creates")]


class ProviderInfo(msgspec.Struct):
    provider: str
    configured: bool
    state: Annotated[
        Literal["closed", "open", "half_open"],
        msgspec.Meta(description="the circuit, shared by every replica: half_open while one create probes"),
    ]
    failures: Annotated[int, msgspec.Meta(description="consecutive failed creates counted against the provider")]
    open_until: Annotated[Instant, msgspec.Meta(description="end of the cool-down of an open circuit")]
    last_error: str | None
    last_error_at: Instant
    error_rate: Annotated[
        float | None,
        msgspec.Meta(description="share of this replica's recent creates (last 200, last 5 minutes) that failed"),
    ]
    create_latency_ms: Annotated[CreateLatency, msgspec.Meta(description="this replica's recent creates")]
    jobs_in_flight: Annotated[int, msgspec.Meta(description="unfinished jobs on the provider, in the database")]
    rate_limit: Annotated[
        float | None,
        msgspec.Meta(description="requests per second to the provider, shared by every replica; null: unlimited"),
    ]
    polls_behind_seconds: Annotated[
        float | None,
        msgspec.Meta(description="how long the oldest due status check has waited past its time; null: none is due"),
    ]
    poll_interval_seconds: Annotated[
        float | None,
        msgspec.Meta(
            description="seconds between two status checks of one job at its cadence's cap, or, with a rate limit, "
            "jobs in flight / the limit's steady rate when that is longer; null: not configured here"
        ),
    ]


class ProviderList(msgspec.Struct):
    data: list[ProviderInfo]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@get(
    "/v1/providers",
    dependencies={"caller": Provide(authenticate)},
    guards=[refuse_unknown_query],
    tags=["models"],
    summary="Provider health: circuit state, recent create errors and latency, jobs in flight",
    security=SECURITY,
    responses=error_responses(400, 401, 429, 503),
    operation_class=ApiOperation,
)
async def list_providers(request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]) -> ProviderList:
    """Every provider Reelay knows. The circuit (`state`, `failures`, `open_until`, `last_error`) is shared by all
    replicas; `error_rate` and `create_latency_ms` are this replica's view of its own recent creates."""
    data = []
    for provider, configured, view, in_flight, limit, behind, interval in await context(request).gateway.providers():
        data.append(
            ProviderInfo(
                provider=provider,
                configured=configured,
                state=view.state,  # type: ignore[arg-type]
                failures=view.failures,
                open_until=None if view.open_until is None else to_iso(view.open_until),
                last_error=view.last_error,
                last_error_at=None if view.last_error_at is None else to_iso(view.last_error_at),
                error_rate=None if view.error_rate is None else round(view.error_rate, 4),
                create_latency_ms=CreateLatency(p50=_ms(view.latency_p50), p99=_ms(view.latency_p99)),
                jobs_in_flight=in_flight,
                rate_limit=limit,
                polls_behind_seconds=behind,
                poll_interval_seconds=interval,
            )
        )
    return ProviderList(data=data)
