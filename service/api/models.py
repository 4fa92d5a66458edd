"""`/v1/models`: every model id with its capabilities, price, and whether its provider is configured here."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide

from service.api.context import authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY
from service.api.query import refuse_unknown_query
from service.capabilities import capability_record
from service.providers.base import ModelSpec
from storage import ApiKeyRecord


class ModelInfo(msgspec.Struct):
    id: str
    provider: str
    available: bool
    capabilities: dict[str, Any]
    price: dict[str, Any] | None


class ModelList(msgspec.Struct):
    data: list[ModelInfo]


def model_info(spec: ModelSpec, available: bool) -> ModelInfo:
    return ModelInfo(
        id=spec.id,
        provider=spec.provider,
        available=available,
        capabilities=capability_record(spec),
        price=None if spec.price is None else msgspec.to_builtins(spec.price),
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
    return ModelList(data=[model_info(spec, available) for spec, available in context(request).gateway.list_models()])
