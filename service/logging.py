"""structlog set-up: JSON in production, console in development, secrets never written."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_SECRET_WORDS = ("secret", "token", "password", "authorization", "api_key", "apikey", "signature", "body", "key_hash")


@functools.lru_cache(maxsize=1024)  # field names come from call sites: a small, fixed set
def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # A safety net: call sites never pass secrets, but a field with such a name is masked anyway.
    for name in event_dict:
        if _is_secret(name):
            event_dict[name] = "[redacted]"
    return event_dict


_json = msgspec.json.Encoder(enc_hook=repr)  # what the standard library's json cannot encode, it reprs too


def _dumps(event_dict: Any, **_: Any) -> str:
    return _json.encode(event_dict).decode()


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route structlog and the standard library (uvicorn, litestar) through one renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # uvicorn's access log repeats what our request log says, and prints query strings.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
