"""`/v1/models`: every model id with its capabilities, price, and whether its provider is configured here; and every
route with its candidates and the union of their capabilities."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide

from service.api.context import authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY
from service.api.query import refuse_unknown_query
from service.capabilities import capability_record
from service.providers.base import ModelSpec
from service.routes import Route, capability_union
from service.wire import schema_doc
from storage import ApiKeyRecord


class ModelInfo(msgspec.Struct):
    id: str
    provider: str
    available: bool
    capabilities: dict[str, Any]
    price: dict[str, Any] | None


class RouteCandidate(msgspec.Struct):
    model: str
    provider: str
    available: Annotated[bool, schema_doc("whether its provider is configured here")]


class RouteInfo(msgspec.Struct):
    id: str
    strategy: Annotated[str, schema_doc("priority (the listed order) or cheapest (by the job's estimate)")]
    candidates: list[RouteCandidate]
    retry_failed: bool
    capabilities: Annotated[
        dict[str, Any],
        schema_doc(
            "what at least one candidate offers: durations, resolutions, aspect_ratios, inputs, max_reference_* "
            "and audio; a job goes to the candidates that can serve it"
        ),
    ]


class ModelList(msgspec.Struct):
    data: list[ModelInfo]
    routes: Annotated[list[RouteInfo], schema_doc("route ids, usable as `model`: each names its candidates")]


def model_info(spec: ModelSpec, available: bool) -> ModelInfo:
    return ModelInfo(
        id=spec.id,
        provider=spec.provider,
        available=available,
        capabilities=capability_record(spec),
        price=None if spec.price is None else msgspec.to_builtins(spec.price),
    )


def route_info(route: Route, candidates: list[tuple[ModelSpec, bool]]) -> RouteInfo:
    return RouteInfo(
        id=route.id,
        strategy=route.strategy,
        candidates=[RouteCandidate(model=s.id, provider=s.provider, available=a) for s, a in candidates],
        retry_failed=route.retry_failed,
        capabilities=capability_union([spec for spec, _ in candidates]),
    )


@get(
    "/v1/models",
    dependencies={"caller": Provide(authenticate)},
    guards=[refuse_unknown_query],
    tags=["models"],
    summary="Model ids, capabilities and prices",
    security=SECURITY,
    responses=error_responses(400, 401, 429, 503),
    operation_class=ApiOperation,
)
async def list_models(request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]) -> ModelList:
    gateway = context(request).gateway
    return ModelList(
        data=[model_info(spec, available) for spec, available in gateway.list_models()],
        routes=[route_info(route, candidates) for route, candidates in gateway.list_routes()],
    )
