"""structlog set-up: JSON in production, console in development, secrets never written."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import msgspec
import structlog

_SECRET_WORDS = ("secret", "token", "password", "authorization", "api_key", "apikey", "signature", "body", "key_hash")
# A per-job callback URL's last segment is its token; query values named like a token or signature are secrets.
_CALLBACK_TOKEN = re.compile(r"(/webhooks/[^/?#\s]+/[^/?#\s]+/)[^/?#\s]+")
_SECRET_PARAM = r"(?:[\w.\-]*token[\w.\-]*|sig|[\w.\-]*signature[\w.\-]*)"  # noqa: S105 (a pattern)
_SECRET_QUERY = re.compile(rf"((?:^|[?&;]){_SECRET_PARAM}=)[^&;#\s]*", re.I)
_SECRET_NAME = re.compile(_SECRET_PARAM, re.I)
_REDACTED = "[redacted]"
# C0, DEL and C1 controls: a terminal obeys them (ESC starts a sequence, and so does U+009B CSI in UTF-8 mode).
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0)]
_ESCAPE_ALL = {c: f"\\x{c:02x}" for c in _CONTROLS} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPE_KEEP_LINES = {c: e for c, e in _ESCAPE_ALL.items() if c != 0x0A}  # tracebacks keep their line breaks
_MULTILINE_KEYS = ("exception", "stack")
# msgspec escapes C0 in JSON strings but writes DEL and C1 as they are; they may only occur inside strings.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


@functools.lru_cache(maxsize=1024)  # field names come from call sites: a small, fixed set
def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # A safety net: call sites never pass secrets, but a field with such a name is masked anyway.
    for name in event_dict:
        if _is_secret(name):
            event_dict[name] = _REDACTED
    return event_dict


def redact_urls(text: str) -> str:
    """`text` with per-job callback tokens and token/signature query values replaced by a marker."""
    if "/webhooks/" in text:
        text = _CALLBACK_TOKEN.sub(rf"\1{_REDACTED}", text)
    if "=" in text:
        text = _SECRET_QUERY.sub(rf"\1{_REDACTED}", text)
    return text


def redact_query(query: str) -> str:
    """A raw query string with the values of token and signature parameters replaced, names decoded first."""
    parts = re.split("([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition("=")
        if eq and _SECRET_NAME.fullmatch(unquote_plus(name)):
            parts[i] = f"{name}={_REDACTED}"
    return "".join(parts)


def _redact_urls(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Any string may hold a URL: a request path, a query, an exception message, a uvicorn line.
    for name, value in event_dict.items():
        if isinstance(value, str):
            event_dict[name] = redact_urls(value)
    return event_dict


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`, `\\n`, ...)."""
    return text.translate(_ESCAPE_KEEP_LINES if keep_newlines else _ESCAPE_ALL)


def _escape_for_console(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    # The console renderer prints strings raw and other values by repr: escape both, and the keys.
    escaped: dict[str, Any] = {}
    for name, value in event_dict.items():
        if value is not None and not isinstance(value, (str, int, float)):
            value = repr(value)
        if isinstance(value, str):
            value = escape_controls(value, keep_newlines=name in _MULTILINE_KEYS)
        escaped[escape_controls(str(name))] = value
    return escaped


_json = msgspec.json.Encoder(enc_hook=repr)  # what the standard library's json cannot encode, it reprs too


def _dumps(event_dict: Any, **_: Any) -> str:
    return _json.encode(event_dict).decode().translate(_JSON_ESCAPES)


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route structlog and the standard library (uvicorn, litestar) through one renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    # Last before rendering, so that exception texts are covered too.
    final: list[Any] = [structlog.processors.format_exc_info, _redact_urls]
    renderer: Any
    if log_format == "console":
        final.append(_escape_for_console)
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, *final, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # uvicorn's access log repeats what our request log says (and would print paths the net above must redact).
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
