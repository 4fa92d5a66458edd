"""The error shape of every 4xx and 5xx answer, its OpenAPI documentation, and the one handler that maps every
exception to it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import structlog
from litestar import MediaType, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIHeader, OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIType

from reelay_signing import SignatureError
from service.errors import RangeNotSatisfiable, RateLimited, ReelayError
from storage import QueryRejected, StorageUnavailable

if TYPE_CHECKING:
    from litestar import Request

log = structlog.get_logger("reelay.http")


class ErrorBody(msgspec.Struct):
    code: Annotated[
        str,
        msgspec.Meta(
            description="stable, machine-readable: invalid_request, invalid_last_event_id, unauthorized, "
            "invalid_token, token_expired, invalid_signature, url_expired, budget_exhausted, csrf_failed, not_found, "
            "asset_expired, range_not_satisfiable, method_not_allowed, request_timeout, conflict, "
            "idempotency_conflict, job_finished, invalid_webhook_url, too_many_endpoints, endpoint_disabled, "
            "endpoint_deleted, payload_too_large, headers_too_large, unsupported_media_type, rate_limited, "
            "too_many_streams, unavailable, schema_outdated, disk_full, internal_error",
            examples=["invalid_request"],
        ),
    ]
    message: Annotated[str, msgspec.Meta(description="for humans; names the field at fault")]
    details: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="always an object, possibly empty: structured context such as the `field` or `parameter` "
            "at fault, the `allowed` values, a `reason` code, or a schema error's `errors` list",
            examples=[{"field": "input.resolution", "allowed": ["480p", "720p"]}],
        ),
    ]


class ErrorResponse(msgspec.Struct):
    """The one error shape of every 4xx and 5xx answer."""

    error: ErrorBody


# -- OpenAPI: every error an operation can answer is documented with the shape above ----------------

ERROR_DESCRIPTIONS: dict[int, tuple[str, str]] = {
    400: (
        "invalid_request",
        "Invalid request: a malformed body, parameter or header, an unknown or repeated query parameter, "
        "or input the model cannot serve",
    ),
    401: ("unauthorized", "Missing or invalid API key (`Authorization: Bearer <key>` or `x-api-key`)"),
    402: (
        "budget_exhausted",
        "The API key's budget cannot take this job's estimate: `details` has the `unit`, `limit`, `spent`, "
        "`reserved`, `estimate`, `period` and `resets_at`",
    ),
    403: (
        "invalid_signature",
        "A signed URL whose signature does not match (`invalid_signature`) or has expired (`url_expired`)",
    ),
    404: ("not_found", "No such job for this API key"),
    409: ("conflict", "Conflict with the job's current state"),
    413: ("payload_too_large", "The request body is larger than the configured limit"),
    410: ("asset_expired", "The asset was deleted after REELAY_ASSET_RETENTION_DAYS; the job is kept"),
    416: ("range_not_satisfiable", "No byte of the asset is in the requested Range; `Content-Range` names its size"),
    415: ("unsupported_media_type", "The request body is not declared as JSON"),
    429: ("rate_limited", "Too many requests for this API key (`rate_limited`); retry after `Retry-After` seconds"),
    503: ("unavailable", "The database is unavailable; retry later"),
}


def error_responses(*statuses: int, described: dict[int, str] | None = None) -> dict[int, ResponseSpec]:
    """OpenAPI `responses` for the given error statuses, each documented with `ErrorResponse`.

    Also replaces the 400 Litestar documents by default (its own ValidationException shape, which is not ours).
    """
    specs = {}
    for status in statuses:
        code, description = ERROR_DESCRIPTIONS[status]
        description = (described or {}).get(status, description)
        example = ErrorResponse(ErrorBody(code=code, message=description, details={}))
        specs[status] = ResponseSpec(
            data_container=ErrorResponse,
            description=description,
            generate_examples=False,
            examples=[Example(summary=description, value=msgspec.to_builtins(example))],
        )
    return specs


@dataclass
class ApiOperation(Operation):
    """What `ResponseSpec` cannot say: a 429 always carries `Retry-After` (whole seconds)."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status == "429" and isinstance(response, OpenAPIResponse):
                response.headers = {
                    "Retry-After": OpenAPIHeader(
                        schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
                        required=True,
                        description="seconds to wait before retrying",
                    )
                }


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_content(exc: ReelayError) -> ErrorResponse:
    """The error shape of an answer the service chose."""
    return ErrorResponse(ErrorBody(code=exc.code, message=exc.message, details=exc.details))


def encode_error(exc: ReelayError) -> bytes:
    """The error shape as JSON, for an answer written below the framework (the server's 431)."""
    return msgspec.json.encode(error_content(exc))


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    """Every exception leaves as the error shape; only genuine faults are 5xx. The tree in service/errors.py says
    what each one becomes."""
    if isinstance(exc, RateLimited):
        return _response(exc.status_code, error_content(exc), {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, RangeNotSatisfiable):
        return _response(416, error_content(exc), {"Content-Range": f"bytes */{exc.size}"})
    if isinstance(exc, ReelayError):
        return _response(exc.status_code, error_content(exc))
    if isinstance(exc, SignatureError):
        return _error(401, "invalid_signature", exc.message, {"reason": exc.reason})
    if isinstance(exc, ValidationException):
        return _error(400, "invalid_request", _validation_message(exc), _validation_details(exc))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status >= 500:
            log.error("http.error", status=status, detail=exc.detail)
            return _error(status, "internal_error", "internal error")
        headers = dict(exc.headers) if exc.headers else None
        code = _HTTP_CODES.get(status, "http_error")
        return _error(status, code, str(exc.detail), _http_details(request, status, headers), headers)
    # Raised by the JSON decoder on a request body, before any handler runs.
    if isinstance(exc, UnicodeDecodeError):
        return _error(400, "invalid_request", "the request body is not valid UTF-8")
    if isinstance(exc, RecursionError):
        return _error(400, "invalid_request", "the request body is nested too deeply")
    if isinstance(exc, QueryRejected):  # the request was too much for the database: bad input, not an outage
        log.warning("storage.query_rejected", error=str(exc))
        return _error(
            400,
            "invalid_request",
            "the database cannot take this request: it is too large, or holds a value it cannot store "
            "(such as a NUL character)",
        )
    if isinstance(exc, StorageUnavailable):
        log.error("storage.unavailable", error=str(exc))
        return _error(503, "unavailable", "the database is unavailable; retry later")
    log.exception("http.unhandled", path=request.url.path, exc_type=type(exc).__name__)
    return _error(500, "internal_error", "internal error")


def _error(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorResponse]:
    return _response(status, ErrorResponse(ErrorBody(code=code, message=message, details=dict(details or {}))), headers)


def _response(status: int, content: ErrorResponse, headers: dict[str, str] | None = None) -> Response[ErrorResponse]:
    return Response(content, status_code=status, media_type=MediaType.JSON, headers=headers)


def schema_details(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A schema error's details: the first field at fault, and every error under `errors`."""
    first = errors[0].get("key") if errors else None
    return {"field": first, "errors": errors} if first else {"errors": errors}


def _validation_details(exc: ValidationException) -> dict[str, Any]:
    extra = exc.extra
    if isinstance(extra, list):
        return schema_details(
            [
                {k: v for k, v in item.items() if k in {"key", "message", "source"}}
                for item in extra
                if isinstance(item, dict)
            ]
        )
    return {}


def _http_details(request: Request[Any, Any, Any], status: int, headers: dict[str, str] | None) -> dict[str, Any]:
    """What the framework's own errors can say in `details` (the allowed methods, the body limit)."""
    allow = next((v for k, v in (headers or {}).items() if k.lower() == "allow"), None)
    if status == 405 and allow:
        return {"allowed": [method.strip() for method in allow.split(",")]}
    if status == 413:
        return {"max_bytes": request.route_handler.resolve_request_max_body_size()}
    return {}


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        first = extra[0]
        key = first.get("key")
        message = str(first.get("message", "invalid value"))
        return f"{key}: {message}" if key else message
    return "the request body is not valid JSON for this endpoint"
