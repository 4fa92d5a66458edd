"""`/v1/jobs`: create, list, get and cancel jobs; thin handlers over the gateway (a job's event stream is in
`service.api.events`, as it also takes stream tokens)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.openapi import ResponseSpec
from litestar.params import Body, FromPath, HeaderParameter, QueryParameter
from litestar.response import Stream

from service.api.body import require_json, strict
from service.api.content import asset_signer
from service.api.context import authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY, text_param
from service.api.query import QUERY_FAMILIES, key_then_query
from service.errors import InvalidRequest
from service.gateway import Gateway
from service.vocabulary import STATUSES
from service.wire import MAX_METADATA_KEYS, AssetSigner, Job, JobCreate, JobList, encode_job
from storage import ApiKeyRecord, JobFilter, JobRecord

_encode = msgspec.json.Encoder().encode
_LIST_CHUNK = 20  # jobs of a list page read and sent at a time
_META_PARAM = re.compile(r"^metadata\.([A-Za-z0-9_.\-]{1,40})$")
OptionalText = Annotated[str | None, QueryParameter(**text_param("exact match"))]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        **text_param(
            "the same key with the same body returns the original job (200); with another body, 409",
            min_length=1,
            max_length=255,
            pattern=r"^[\x20-\x7E]+$",
        ),
    ),
]
CancelAfter = Annotated[
    str | None,  # checked by the gateway, so a malformed value is the same 400 as an out-of-range one
    HeaderParameter(
        name="Cancel-After",
        required=False,
        **text_param(
            "whole seconds: the job fails with `timeout` if it has not finished by then (as `deadline_seconds`; "
            "with both, the smaller wins)",
            pattern=r"^[0-9]+$",
        ),
    ),
]
_JOB_RESPONSES = error_responses(400, 401, 404, 429, 503)


def _json(body: bytes, status: int = 200) -> Response[Any]:
    return Response(body, status_code=status, media_type=MediaType.JSON)


_decode_job_create = msgspec.json.Decoder(JobCreate)


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    dependencies = {"caller": Provide(authenticate)}
    guards = [key_then_query]
    security = SECURITY

    @post(
        "/",
        status_code=202,
        summary="Create a job",
        response_description="Accepted: the new job",
        responses={
            200: ResponseSpec(
                Job,
                description="A repeat of an earlier request with the same Idempotency-Key: the original job",
                generate_examples=False,
            ),
            **error_responses(
                400,
                401,
                402,
                409,
                413,
                415,
                429,
                503,
                described={
                    409: "Idempotency-Key already used with a different body or `Cancel-After` (`idempotency_conflict`)"
                },
            ),
        },
        operation_class=ApiOperation,
    )
    async def create_job(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[
            JobCreate, Body(media_type=RequestEncodingType.JSON, schema_extra={"additional_properties": False})
        ],
        caller: NamedDependency[ApiKeyRecord],
        idempotency_key: IdempotencyKey = None,
        cancel_after: CancelAfter = None,
    ) -> Response[Job]:
        """Accept a job (202). With `Idempotency-Key`, a repeat of the same request returns the original
        job (200) and a different request with the same key is refused (409)."""
        # `data` is what Litestar validated leniently (and documents the body); the job is built from a strict pass.
        require_json(request)
        job, created = await context(request).gateway.create_job(
            caller.id, strict(_decode_job_create, await request.body()), idempotency_key, cancel_after, caller=caller
        )
        # A repeat may show an archived job: its asset URLs are signed afresh, as GET /v1/jobs/{id} shows them.
        return _json(encode_job(job, signer=asset_signer(context(request))), 202 if created else 200)

    @get(
        "/",
        summary="List jobs, newest first",
        responses=error_responses(400, 401, 429, 503),
        operation_class=ApiOperation,
        opt={QUERY_FAMILIES: ("metadata.",)},
    )
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[ApiKeyRecord],
        # `str`, checked below: with `Literal[...] | None` Litestar would read `?status=null` as no filter at all.
        status: Annotated[
            str | None, QueryParameter(**text_param("only jobs in this status", enum=list(STATUSES)))
        ] = None,
        model: OptionalText = None,
        provider: OptionalText = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="page size")] = 20,
        cursor: Annotated[str | None, QueryParameter(**text_param("a `next_cursor` this API returned"))] = None,
    ) -> Response[JobList]:
        """Filters combine; `metadata.<key>=<value>` filters on metadata (at most 50 such filters).
        `next_cursor` pages on."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(
                f"status: {status!r} is not one of {', '.join(STATUSES)}",
                details={"field": "status", "allowed": list(STATUSES)},
            )
        metadata = {}
        for name, value in request.query_params.items():
            if name.startswith("metadata."):
                match = _META_PARAM.match(name)
                if match is None:
                    raise InvalidRequest(
                        f"{name}: metadata keys are 1-40 of A-Z a-z 0-9 _ . -", details={"field": name}
                    )
                metadata[match.group(1)] = value
        if len(metadata) > MAX_METADATA_KEYS:  # no job can match more (and each key is one more SQL term)
            raise InvalidRequest(
                f"metadata: at most {MAX_METADATA_KEYS} metadata.<key> filters (a job holds at most "
                f"{MAX_METADATA_KEYS} metadata keys), got {len(metadata)}",
                details={"field": "metadata", "max_filters": MAX_METADATA_KEYS},
            )
        filters = JobFilter(status=status, model=model, provider=provider, metadata=metadata)
        gateway = context(request).gateway
        # The first chunk is read before the headers go out, so a bad cursor or a database outage is still a 4xx/5xx.
        page, next_cursor = await gateway.list_jobs(caller.id, filters, min(limit, _LIST_CHUNK), cursor)
        chunks = _job_list(gateway, caller.id, filters, limit, page, next_cursor, asset_signer(context(request)))
        return Stream(chunks, media_type=MediaType.JSON)  # type: ignore[return-value]  # documented as JobList

    @get("/{job_id:str}", summary="Get a job", responses=_JOB_RESPONSES, operation_class=ApiOperation)
    async def get_job(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> Response[Job]:
        ctx = context(request)
        job = await ctx.gateway.get_job(caller.id, job_id)
        return _json(encode_job(job, full_input=await ctx.gateway.full_input(job), signer=asset_signer(ctx)))

    @post(
        "/{job_id:str}/cancel",
        status_code=200,
        summary="Cancel a job",
        responses={
            **_JOB_RESPONSES,
            **error_responses(409, described={409: "The job has succeeded or failed (`job_finished`)"}),
        },
        operation_class=ApiOperation,
    )
    async def cancel_job(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> Response[Job]:
        """Cancel a job that has not finished. Cancelling a cancelled job again returns it (200); a job that
        succeeded or failed answers 409."""
        job = await context(request).gateway.cancel_job(caller.id, job_id)
        return _json(encode_job(job))


async def _job_list(
    gateway: Gateway,
    api_key_id: str,
    filters: JobFilter,
    limit: int,
    page: list[JobRecord],
    next_cursor: str | None,
    signer: AssetSigner | None,
) -> AsyncIterator[bytes]:
    """A list page as `{"data": [...], "next_cursor": ...}`, read and sent `_LIST_CHUNK` jobs at a time: the next
    chunk is read only once the server took the previous one, so a client that stops reading holds one chunk."""
    yield b'{"data":['
    sent = 0
    while True:
        if page:
            yield (b"," if sent else b"") + b",".join(encode_job(j, signer=signer) for j in page)
        sent += len(page)
        if next_cursor is None or sent >= limit:
            break
        page, next_cursor = await gateway.list_jobs(api_key_id, filters, min(limit - sent, _LIST_CHUNK), next_cursor)
    yield b'],"next_cursor":' + _encode(next_cursor) + b"}"
