"""Query strings of the /v1 API: a parameter the handler does not declare is refused, as is one given twice.

A typo (`?stauts=failed`) must not silently widen an answer, just as an unknown body field is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from service.api.context import require_api_key
from service.errors import InvalidRequest

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

QUERY_FAMILIES = "query_families"  # handler `opt` key: prefixes such as "metadata." whose every name is accepted
_DECLARED = "_declared_query"  # handler `opt` key: the declared names, derived once per handler


async def key_then_query(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The key, then the query, before a body is read; one guard, as Litestar copies the handler for each guard."""
    await require_api_key(connection, handler)
    await refuse_unknown_query(connection, handler)


async def refuse_unknown_query(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """A guard: every query parameter must be one the handler declares (or of a declared family), given once.

    Async, because Litestar runs a sync guard in a worker thread: a thread hop on every request.
    """
    params = connection.query_params.multi_items()
    if not params:
        return
    declared = _declared(handler, connection.path_params)
    families: tuple[str, ...] = tuple(handler.opt.get(QUERY_FAMILIES, ()))
    seen: set[str] = set()
    for name, _ in params:
        if name not in declared and not name.startswith(families):
            allowed = sorted(declared) + [f"{family}<key>" for family in families]
            listed = ", ".join(allowed) if allowed else "none"
            raise InvalidRequest(
                f"{name}: unknown query parameter; this endpoint accepts: {listed}",
                details={"parameter": name, "allowed": allowed},
            )
        if name in seen:  # ambiguous (the framework would keep one of them): refused, not guessed
            raise InvalidRequest(f"{name}: given more than once", details={"parameter": name})
        seen.add(name)


def _declared(handler: BaseRouteHandler, path_params: dict[str, Any]) -> frozenset[str]:
    """The query names the handler's signature and dependencies declare, as the framework itself reads them."""
    names: frozenset[str] | None = handler.opt.get(_DECLARED)
    if names is None:
        model = handler.create_kwargs_model(path_parameters=cast("dict[str, Any]", dict.fromkeys(path_params)))
        names = frozenset(param.field_alias for param in model.expected_query_params)
        handler.opt[_DECLARED] = names
    return names
