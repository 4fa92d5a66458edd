"""Litestar middleware that verifies request signatures, with the plain ASGI middleware's behaviour and errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from reelay_signing.asgi import (
    DEFAULT_MAX_BODY_BYTES,
    PathFilter,
    Verifier,
    check_max_body_bytes,
    guard_request,
    path_matcher,
)

# The package's only third-party import, in this module alone, so `import reelay_signing` needs nothing.
try:
    from litestar.enums import ScopeType
    from litestar.middleware import ASGIMiddleware
except ImportError as exc:
    raise ImportError("reelay_signing.litestar needs Litestar: pip install 'reelay-signing[litestar]'") from exc

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

__all__ = ("LitestarSignatureVerificationMiddleware",)


class LitestarSignatureVerificationMiddleware(ASGIMiddleware):
    """Refuse HTTP requests whose body is too large (413) or badly signed (401); pass the rest on intact.

    The verifier's result is in ``request.state.signature``; ``await request.body()`` still
    returns the exact bytes that were verified.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(
        self,
        *,
        verify: Verifier,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        paths: PathFilter = None,
        exclude_opt_key: str | None = None,
    ) -> None:
        """Configure once; ``paths`` limits verification to matching paths, ``exclude_opt_key`` lets a route opt out."""
        self._verify = verify
        self._max_body_bytes = check_max_body_bytes(max_body_bytes)
        self.exclude_opt_key = exclude_opt_key
        if paths is not None:
            matches = path_matcher(paths)
            self.should_bypass_for_scope = lambda scope: not matches(scope["path"])

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        # Litestar's TypedDict ASGI types and asgi.py's plain mappings describe the same objects.
        await guard_request(
            cast("Any", scope),
            cast("Any", receive),
            cast("Any", send),
            cast("Any", next_app),
            verify=self._verify,
            max_body_bytes=self._max_body_bytes,
        )
