"""Inline data (`data:` URIs) in a job's input: capped per job, stored once, shown elsewhere as a placeholder.

Each data URI is replaced by `inline:<media type>;bytes=<N>;sha256=<hex>` (N and the digest are of the decoded
content) in the input that is stored with the job and shown in events, SSE frames and list pages. The URIs are
stored once beside the job, keyed by their placeholder, and put back only for `GET /v1/jobs/{id}` and the
upstream create. Two URIs with the same placeholder carry the same content, so either one can stand for both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from service.errors import InvalidRequest

PREFIX = "inline:"


def is_data_uri(value: str) -> bool:
    return value[:5].lower() == "data:" and "," in value


def data_uris(value: Any) -> Iterator[str]:
    """Every data URI in a JSON value, in document order."""
    if isinstance(value, str):
        if is_data_uri(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from data_uris(item)
    elif isinstance(value, list):
        for item in value:
            yield from data_uris(item)


def inline_size(input: Mapping[str, Any]) -> int:
    """What counts against REELAY_MAX_INLINE_BYTES: the length in bytes of every data URI, as sent."""
    return sum(len(uri.encode()) for uri in data_uris(input))


def check_inline(input: Mapping[str, Any], limit: int) -> None:
    """Refuse an input whose data URIs together exceed `limit` bytes."""
    size = inline_size(input)
    if size > limit:
        raise InvalidRequest(
            f"input: its data: URIs total {size} bytes, over the limit of {limit} (REELAY_MAX_INLINE_BYTES); "
            "send large files as https URLs",
            details={"field": "input", "limit": limit, "size": size},
        )


def placeholder(uri: str) -> str:
    header, _, payload = uri[5:].partition(",")
    params = header.split(";")
    media_type = params[0].strip().lower() if "/" in params[0] else "text/plain"
    if params[-1].strip().lower() == "base64":
        try:
            content = base64.b64decode(payload + "==")
        except binascii.Error:
            content = payload.encode()  # not base64 after all: described as sent, the provider will judge it
    else:
        content = unquote_to_bytes(payload)
    return f"{PREFIX}{media_type};bytes={len(content)};sha256={hashlib.sha256(content).hexdigest()}"


def split_inline(input: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The input with placeholders instead of data URIs, and the data URIs by placeholder."""
    uris: dict[str, str] = {}

    def replace(value: str) -> str:
        if not is_data_uri(value):
            return value
        name = placeholder(value)
        uris.setdefault(name, value)
        return name

    shown: dict[str, Any] = _map_strings(input, replace)
    return shown, uris


def shown_input(input: dict[str, Any]) -> dict[str, Any]:
    """The input as events, SSE frames and list pages show it (also for jobs stored before inline data was split)."""
    if next(data_uris(input), None) is None:
        return input  # every job stored since inline data is kept apart: nothing to copy (it runs on each encode)
    return split_inline(input)[0]


def has_placeholders(value: Any) -> bool:
    """Whether a stored input holds placeholders, so that its full view must read the inline data back."""
    if isinstance(value, str):
        return value.startswith(PREFIX)
    if isinstance(value, dict):
        return any(has_placeholders(item) for item in value.values())
    if isinstance(value, list):
        return any(has_placeholders(item) for item in value)
    return False


def restore_inline(input: dict[str, Any], uris: Mapping[str, str]) -> dict[str, Any]:
    """The whole input: each placeholder replaced by the data URI it stands for."""
    if not uris:
        return input
    restored: dict[str, Any] = _map_strings(input, lambda value: uris.get(value, value))
    return restored


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    return value
