"""`GET /v1/jobs/{id}/content`: a job's archived output, streamed from the asset store with HTTP Range support, for
the key that owns the job or for anyone holding the signed URL the job shows."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, Response, route
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import Stream

from service.api.context import AppContext, authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY, text_param
from service.api.query import refuse_unknown_query
from service.assets import VARIANTS, Asset, AssetStore, asset_key
from service.errors import Forbidden, Gone, InvalidRequest, NotFound, RangeNotSatisfiable
from service.wire import AssetSigner
from storage import ApiKeyRecord

MAX_INDEX = 99  # no provider returns more outputs than this for one job
# One `bytes=<first>-<last>` or `bytes=-<suffix>` range; anything else (several ranges, another unit) is ignored.
_SINGLE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)

_OUTPUT_HEADERS = {
    name: OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description=description)
    for name, description in (
        ("ETag", "the quoted sha256 of the asset"),
        ("Accept-Ranges", "`bytes`"),
        ("Content-Length", "bytes in this answer"),
        ("Cache-Control", "private"),
    )
}


def asset_signer(ctx: AppContext) -> AssetSigner | None:
    """Signs a job's asset URLs as of now, for an answer that shows jobs (a cheap HMAC per asset)."""
    urls = ctx.asset_urls
    if urls is None:
        return None
    now = ctx.clock()
    return lambda job_id, variant, index: urls.url(job_id, variant, index, now)


async def key_or_signature(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """A guard: a request with a `sig` is checked by its signature in the handler; any other needs the API key.

    Only this route takes a signature instead of a key; every other /v1 route keeps its own key guard.
    """
    if "sig" not in connection.query_params:
        await authenticate(connection)
    await refuse_unknown_query(connection, handler)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte positions a `Range` header asks of an object of `size` bytes; None to send it whole
    (no header, or one that is malformed or asks several ranges: RFC 9110 lets a server ignore those).

    Raises RangeNotSatisfiable when the range is well formed but no byte of the object falls in it.
    """
    match = _SINGLE_RANGE.match(header) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"Range {header!r}: the asset has {size} bytes", size=size)
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored
    if start >= size:
        raise RangeNotSatisfiable(f"Range {header!r}: the asset has {size} bytes", size=size)
    return start, min(int(last), size - 1) if last else size - 1


def _etag_matches(header: str, etag: str) -> bool:
    """`If-None-Match`: `*`, or one of its (weak or strong) tags is the asset's."""
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator with no chunks: the answer to HEAD


@route(
    "/v1/jobs/{job_id:str}/content",
    http_method=["GET", "HEAD"],
    summary="Download a job's archived output",
    tags=["jobs"],
    guards=[key_or_signature],
    security=[*SECURITY, {}],
    responses={
        200: ResponseSpec(bytes, description="The whole asset", media_type="*/*", generate_examples=False),
        206: ResponseSpec(
            bytes,
            description="The bytes a single `Range` asked for; `Content-Range` says which",
            media_type="*/*",
            generate_examples=False,
        ),
        304: ResponseSpec(None, description="`If-None-Match` names the asset's ETag"),
        **error_responses(
            400,
            401,
            403,
            404,
            410,
            416,
            429,
            503,
            described={404: "No such job for this API key, no such asset, or REELAY_ASSETS=off"},
        ),
    },
    operation_class=ApiOperation,
)
async def job_content(
    request: Request[Any, Any, Any],
    job_id: FromPath[str],
    variant: Annotated[str, QueryParameter(**text_param("which output", enum=list(VARIANTS)), required=True)],
    index: Annotated[int, QueryParameter(ge=0, le=MAX_INDEX, description="which of the variant's outputs")] = 0,
    expires: Annotated[
        int | None,
        QueryParameter(
            description="with `sig`: the signed URL's expiry (unix seconds)",
            schema_extra={"one_of": None, "type": "integer"},  # absent or an integer, never null
        ),
    ] = None,
    sig: Annotated[
        str | None, QueryParameter(**text_param("the signature of a job's asset `url`; no API key is needed then"))
    ] = None,
    range_header: Annotated[
        str | None,
        HeaderParameter(
            name="Range",
            required=False,
            **text_param("one range: `bytes=<first>-<last>`, `bytes=<first>-`, `bytes=-<n>`"),
        ),
    ] = None,
) -> Response[Any]:
    """Streams the asset with `Content-Type`, `Content-Length`, `ETag` and `Accept-Ranges`. A single `Range` answers
    206 with `Content-Range`; several ranges, or a malformed one, get the whole asset (200). Authorised by the API
    key that owns the job, or, with no key, by the signed `expires` and `sig` of the asset's `url` in the job."""
    ctx = context(request)
    if variant not in VARIANTS:
        raise InvalidRequest(
            f"variant: {variant!r} is not one of {', '.join(VARIANTS)}",
            details={"field": "variant", "allowed": list(VARIANTS)},
        )
    now = ctx.clock()
    owner: str | None = None
    if sig is None:
        caller: ApiKeyRecord = request.scope["state"]["api_key"]  # the guard authenticated the key
        owner = caller.id
    else:
        urls = ctx.asset_urls
        if expires is None or urls is None:
            raise Forbidden("the URL's signature is not valid", code="invalid_signature")
        # The signature alone first (checked as of just before its expiry), so an old URL says it expired.
        if not urls.valid(job_id, variant, index, expires, sig, now=expires - 1):
            raise Forbidden("the URL's signature is not valid", code="invalid_signature")
        if now >= expires:
            raise Forbidden(
                "the URL has expired; read the job again for a fresh one",
                code="url_expired",
                details={"expires": expires},
            )
    store = ctx.asset_store
    if store is None:
        raise NotFound("this Reelay keeps no outputs (REELAY_ASSETS=off)", details={"reason": "assets_off"})
    job = await ctx.gateway.get_job(owner, job_id)
    output = job.output or {}
    asset = next(
        (a for a in output.get("assets") or () if a.get("variant") == variant and a.get("index") == index), None
    )
    if asset is not None and output.get("assets_expired_at"):
        raise Gone(
            f"job {job_id}'s {variant} {index} was deleted on {output['assets_expired_at']} "
            "(REELAY_ASSET_RETENTION_DAYS)",
            code="asset_expired",
            details={"expired_at": output["assets_expired_at"]},
        )
    key = asset_key(job_id, variant, index)
    size = await store.size(key) if asset is not None else None
    if asset is None or size is None:
        raise NotFound(f"job {job_id} has no archived {variant} {index}", details={"variant": variant, "index": index})
    served = Asset(
        variant=variant, index=index, url="", bytes=size, content_type=asset["content_type"], sha256=asset["sha256"]
    )
    return _answer(request, store, served, key, range_header, expires if sig is not None else None, now)


def _answer(
    request: Request[Any, Any, Any],
    store: AssetStore,
    asset: Asset,
    key: str,
    range_header: str | None,
    expires: int | None,
    now: float,
) -> Response[Any]:
    """The asset's headers, then its bytes (all of them, or the one range asked), or a 304 when the client has it."""
    size = asset.bytes
    etag = f'"{asset.sha256}"'
    # Immutable bytes: a signed URL may be reused until it expires; a key's request revalidates (its ETag: a 304).
    cache = "private, no-cache" if expires is None else f"private, max-age={max(0, int(expires - now))}"
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": cache}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(b"", status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    wanted = byte_range(range_header, size) if if_range is None or if_range.strip() == etag else None
    start, end, status = (0, size, 200) if wanted is None else (wanted[0], wanted[1] + 1, 206)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    body = _nothing() if request.method == "HEAD" else store.read(key, start, end)
    # In the headers: Litestar gives a handler's own media type precedence over a Stream's.
    headers["content-type"] = asset.content_type
    return Stream(body, status_code=status, headers=headers)
