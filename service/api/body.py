"""Request bodies of the /v1 API: declared as JSON, and decoded strictly into their msgspec struct."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from service.api.errors import schema_details
from service.errors import InvalidRequest, UnsupportedMediaType

if TYPE_CHECKING:
    from litestar import Request

T = TypeVar("T")


def require_json(request: Request[Any, Any, Any]) -> None:
    """A body declared as something other than JSON is refused, even when it happens to parse."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json", details={"field": "Content-Type"})


def strict(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Litestar converts bodies leniently ("5" -> 5, "true" -> True); the API's types are strict."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        key = where.rstrip("`").lstrip(".") or "data"
        raise InvalidRequest(
            f"{key}: {message}", details=schema_details([{"key": key, "message": message, "source": "body"}])
        ) from None
