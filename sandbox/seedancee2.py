"""Emulator of the Seedancee2 Enterprise API (seed 002) that stands in for the real provider in tests and dev.

It follows the documented contract (paths, auth, `{"data": ...}` envelopes, error codes, signed terminal
callbacks) strictly, and adds unauthenticated, sandbox-only control endpoints under `/_sandbox/`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET, UnsetType
from ulid import ULID

from sandbox.common import (
    Callback,
    CallbackRecord,
    SandboxApiError,
    SandboxCore,
    SandboxTask,
    iso,
    json_response,
    sandbox_app,
)
from sandbox.knobs import SandboxKnobs
from sandbox.registry import SandboxSpec

__all__ = ["SANDBOX", "create_seedancee2_sandbox"]

# Reelay's credentials for this emulator: public, sandbox-only values.
API_KEY = "sk_seedancee2_live_sandbox"
WEBHOOK_SECRET = "whsec_seedancee2_sandbox"  # noqa: S105 - a public sandbox-only secret

T = TypeVar("T")

Status = Literal["pending", "processing", "completed", "failed"]
Outcome = Literal["completed", "failed"]
Resolution = Literal["480p", "720p", "1080p"]
AspectRatio = Literal["16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"]
GenerationType = Literal["omni_reference", "first_and_last_frames"]

STATUSES: tuple[Status, ...] = ("pending", "processing", "completed", "failed")
# What `POST /_sandbox/tasks/{id}/<action>` forces.
FORCED: dict[str, Outcome] = {"complete": "completed", "fail": "failed"}

# Credits per second of output, per model and resolution (seed 002, "Credits"); a missing key = unsupported.
RATES: dict[str, dict[str, int]] = {
    "pro": {"480p": 10, "720p": 20, "1080p": 50},
    "fast": {"480p": 8, "720p": 16},
    "mini": {"480p": 5, "720p": 10},
}
MIN_DURATION_S = 4
MAX_DURATION_S = 15
# Assumption: the doc states no default resolution; 720p is what every example sends, so credits use it.
DEFAULT_RESOLUTION = "720p"
FAILURE_MESSAGE = "The video could not be generated. Please try again with a different prompt."


# ---------------------------------------------------------------------------------------------------------
# Wire structs. Field order is the order the doc shows; UNSET fields are omitted from the JSON.


class CreateInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`input` of a create request. Unknown fields are rejected so a misspelt adapter field fails loudly.

    Explicit nulls are rejected too: the doc gives no nullability, so adapters must omit absent fields.
    """

    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    generation_type: GenerationType = "omni_reference"
    image_urls: Annotated[list[str], msgspec.Meta(max_length=9)] | UnsetType = UNSET
    video_url: str | UnsetType = UNSET
    video_urls: Annotated[list[str], msgspec.Meta(max_length=3)] | UnsetType = UNSET
    audio_urls: Annotated[list[str], msgspec.Meta(max_length=3)] | UnsetType = UNSET
    start_image_url: str | UnsetType = UNSET
    end_image_url: str | UnsetType = UNSET
    duration: Annotated[int, msgspec.Meta(ge=MIN_DURATION_S, le=MAX_DURATION_S)] = 5
    resolution: Resolution | UnsetType = UNSET
    aspect_ratio: AspectRatio | UnsetType = UNSET
    generate_audio: bool | UnsetType = UNSET
    watermark: bool | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    return_last_frame: bool | UnsetType = UNSET


class CreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    input: CreateInput
    callback_url: str | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET


class DataEnvelope(msgspec.Struct, Generic[T]):
    data: T


class CreatedTask(msgspec.Struct):
    id: str
    status: Status
    model: str
    credits_reserved: int
    created_at: str


class TaskOutput(msgspec.Struct):
    video_url: str
    thumbnail_url: str
    last_frame_url: str | UnsetType = UNSET


class TaskError(msgspec.Struct):
    code: str
    message: str
    type: str


class TaskView(msgspec.Struct):
    id: str
    status: Status
    model: str
    created_at: str
    completed_at: str | UnsetType = UNSET
    credits_charged: int | UnsetType = UNSET
    credits_refunded: int | UnsetType = UNSET
    output: TaskOutput | UnsetType = UNSET
    error: TaskError | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET


class DurationRange(msgspec.Struct):
    min: int
    max: int


class ModelInfo(msgspec.Struct):
    id: str
    status: str
    resolutions: list[str]
    duration: DurationRange


class ErrorEnvelope(msgspec.Struct):
    error: TaskError


# ---------------------------------------------------------------------------------------------------------
# Errors: everything the emulator answers with goes through the documented `{"error": {...}}` shape.


def _invalid(message: str) -> SandboxApiError:
    return SandboxApiError(400, message, code="invalid_request")


# The error `type` that goes with each status, as the doc pairs them; 409 and 429 are the emulator's own.
_ERROR_TYPES = {401: "authentication_error", 402: "billing_error", 409: "sandbox_error", 429: "rate_limit_error"}


def _error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    error_type = _ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")
    body = msgspec.json.encode(ErrorEnvelope(TaskError(code=code, message=message, type=error_type)))
    return Response(body, status_code=status_code, media_type="application/json", headers=dict(headers or {}))


def _on_sandbox_error(_: Request[Any, Any, Any], exc: SandboxApiError) -> Response[bytes]:
    return _error_response(exc.status_code, exc.code, exc.message, exc.headers)


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    # Unknown routes and methods are not covered by the doc; keep the documented shape anyway.
    if exc.status_code >= 500:
        return _error_response(exc.status_code, "internal_error", "Unexpected server error.")
    return _error_response(exc.status_code, "invalid_request", exc.detail)


def _on_unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _error_response(500, "internal_error", f"Unexpected server error: {exc!r}")


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _parse_iso(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(f"{name} must be an ISO 8601 datetime.") from None
    # A datetime without an offset is read as UTC, the zone every timestamp of this API is in.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise _invalid("limit must be an integer.") from None
    # The doc says "max 100" (list) / "max 365" (usage); answering 400 keeps an adapter from relying on clamping.
    if not 1 <= limit <= maximum:
        raise _invalid(f"limit must be between 1 and {maximum}.")
    return limit


def _sign_callback(secret: str, timestamp: int, body: bytes) -> str:
    """`X-Seedancee2-Signature` value: `t=<unix>,v1=hex(HMAC_SHA256(secret, "{t}." + raw_body))`.

    Deliberately independent of `reelay_signing`, so a bug there cannot be cancelled out by a shared one here.
    """
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(eq=False, kw_only=True)
class _Task(SandboxTask[Outcome]):
    request: CreateRequest
    body: Any
    credits: int
    created_at: datetime
    # The complete_after_s the task was created with, kept even if a test forces the outcome earlier.
    lifetime_s: float

    def status(self, now_mono: float) -> Status:
        return self.stage(now_mono, "pending", "processing")

    def view(self, now_mono: float, *, for_callback: bool = False) -> TaskView:
        status = self.status(now_mono)
        metadata = self.request.metadata
        view = TaskView(
            id=self.id, status=status, model=self.request.model, created_at=iso(self.created_at), metadata=metadata
        )
        if status == "completed":
            completed_at = self.created_at + timedelta(seconds=self.terminal_after_s)
            day = completed_at.strftime("%Y/%m/%d")
            poster = self.media_url(f"video-posters/{day}/{self.id}.jpg")
            # The doc's GET example (which asked for return_last_frame) shows last_frame_url equal to the
            # poster URL; the completed webhook example omits it, so callbacks never carry it.
            wants_last_frame = self.request.input.return_last_frame is True and not for_callback
            view.completed_at = iso(completed_at)
            view.credits_charged = self.credits
            view.output = TaskOutput(
                video_url=self.media_url(f"videos/{day}/{self.id}.mp4"),
                thumbnail_url=poster,
                last_frame_url=poster if wants_last_frame else UNSET,
            )
        elif status == "failed":
            view.credits_charged = 0
            view.credits_refunded = self.credits
            view.error = TaskError(code="generation_failed", message=FAILURE_MESSAGE, type="generation_error")
        return view


def _validate(request: CreateRequest) -> int:
    """Check what the struct cannot express; return the credits to reserve."""
    rates = RATES.get(request.model)
    if rates is None:
        raise SandboxApiError(404, f"Model {request.model!r} does not exist or is inactive.", code="model_not_found")
    spec = request.input
    resolution = spec.resolution if isinstance(spec.resolution, str) else DEFAULT_RESOLUTION
    if resolution not in rates:
        raise _invalid(f"Resolution {resolution} is not supported by model {request.model}.")
    if not isinstance(spec.video_url, UnsetType) and not isinstance(spec.video_urls, UnsetType):
        raise _invalid("Do not send video_url together with video_urls.")
    has_start = not isinstance(spec.start_image_url, UnsetType)
    has_end = not isinstance(spec.end_image_url, UnsetType)
    if spec.generation_type == "first_and_last_frames" and not (has_start and has_end):
        raise _invalid("first_and_last_frames requires start_image_url and end_image_url.")
    # The frame fields are documented for first_and_last_frames only; silently ignoring them would hide a bug.
    if spec.generation_type == "omni_reference" and (has_start or has_end):
        raise _invalid("start_image_url and end_image_url require generation_type first_and_last_frames.")
    if isinstance(request.callback_url, str) and not request.callback_url.startswith(("http://", "https://")):
        raise _invalid("callback_url must be an http(s) URL.")
    # number_of_outputs is in the formula, but no request field sets it: always 1.
    return spec.duration * rates[resolution]


def _counts(tasks: Iterable[_Task], now_mono: float) -> dict[str, int]:
    counts = dict.fromkeys(("total_jobs", "pending_jobs", "processing_jobs", "completed_jobs", "failed_jobs"), 0)
    charged = refunded = 0
    for task in tasks:
        status = task.status(now_mono)
        counts["total_jobs"] += 1
        counts[f"{status}_jobs"] += 1
        if status == "completed":
            charged += task.credits
        elif status == "failed":
            refunded += task.credits
    # net = charged - refunded, as the doc's usage example computes it (280 - 40 = 240).
    return {**counts, "credits_charged": charged, "credits_refunded": refunded, "net_credits": charged - refunded}


# ---------------------------------------------------------------------------------------------------------
# State


class _Seedancee2Sandbox(SandboxCore[_Task, Outcome]):
    # Retries are not documented by Seedancee2; a few quick ones keep flaky-receiver tests short.
    CALLBACK_ATTEMPTS = 3

    def __init__(
        self,
        api_keys: frozenset[str],
        webhook_secret: str | None,
        knobs: SandboxKnobs | None,
        callback_client: httpx.AsyncClient | None,
    ) -> None:
        super().__init__(api_keys=api_keys, knobs=knobs, callback_client=callback_client)
        self.webhook_secret = webhook_secret

    # -- provider words ---------------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> str:
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip() in self.api_keys:
                return token.strip()
        api_key = headers.get("x-api-key")
        if api_key is not None and api_key in self.api_keys:
            return api_key
        raise SandboxApiError(401, "API key is missing, invalid, or disabled.", code="invalid_api_key")

    def rate_limited(self) -> SandboxApiError:
        # 429 is not documented by Seedancee2; the code and type are the emulator's choice.
        return SandboxApiError(
            429,
            "Too many requests.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(self.chaos.knobs.retry_after_s)},
        )

    def server_error(self) -> SandboxApiError:
        return SandboxApiError(500, "Unexpected server error.", code="internal_error")

    def refusal(self) -> SandboxApiError:
        return _invalid("Missing or invalid parameters (sandbox: refuse_creates).")

    def out_of_credits(self) -> SandboxApiError:
        # The doc's own example body, word for word.
        return SandboxApiError(402, "Your credit balance is too low. Please top up.", code="insufficient_credits")

    def not_found(self, task_id: str) -> SandboxApiError:
        return SandboxApiError(404, f"Task {task_id} does not exist.", code="task_not_found")

    def already_terminal(self, task: _Task) -> SandboxApiError:
        return SandboxApiError(409, f"Task {task.id} is already {task.outcome}.", code="task_already_terminal")

    def invalid_knobs(self, message: str) -> SandboxApiError:
        return _invalid(message)

    def describe(self, task: _Task, now_mono: float) -> dict[str, Any]:
        return {
            "id": task.id,
            "status": task.status(now_mono),
            "outcome": task.outcome,
            "forced": task.forced,
            "callback_url": task.request.callback_url or None,
            "request": task.body,
            "view": task.view(now_mono),
        }

    def forced_view(self, task: _Task) -> DataEnvelope[TaskView]:
        return DataEnvelope(task.view(time.monotonic()))

    # -- create -----------------------------------------------------------------------------------------

    def create(self, owner: str, raw: bytes) -> _Task:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise _invalid("Request body is not valid JSON.") from None
        try:
            # Decoded from the raw bytes (not converted from `body`) so JSON types are checked strictly.
            request = msgspec.json.decode(raw, type=CreateRequest)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None
        credits = _validate(request)
        task = _Task(
            id=f"vid_{str(ULID()).lower()}",
            owner=owner,
            request=request,
            body=body,
            credits=credits,
            created_at=datetime.now(UTC),
            **self.schedule(),
            lifetime_s=self.chaos.knobs.complete_after_s,
            outcome="failed" if self.chaos.should_fail() else "completed",
        )
        self.tasks[task.id] = task
        self.accepted_creates.append({"id": task.id, "body": body})
        if isinstance(request.callback_url, str):
            task.timer = self.spawn(self._callback_when_terminal(task))
        return task

    def force(self, task_id: str, outcome: Outcome) -> _Task:
        task = super().force(task_id, outcome)
        if isinstance(task.request.callback_url, str):
            self.spawn(self._terminal_callback(task))  # the task is settled: nothing will cancel this
        return task

    # -- callbacks --------------------------------------------------------------------------------------

    async def _callback_when_terminal(self, task: _Task) -> None:
        await task.reach_terminal()
        await self._terminal_callback(task)

    def _terminal_callback(self, task: _Task) -> Coroutine[Any, Any, None]:
        """Snapshot the body and roll the dice now (synchronously); return the coroutine that delivers.

        Deciding at the terminal transition, not when the delivery task first runs, keeps a knobs change
        that follows a force from affecting that force's callback.
        """
        assert isinstance(task.request.callback_url, str)
        view = task.view(time.monotonic(), for_callback=True)
        event = f"video.generation.{view.status}"
        body = msgspec.json.encode(DataEnvelope(view))
        callback = Callback(
            log=CallbackRecord(task_id=task.id, url=task.request.callback_url, event=event),
            body=body,
            headers=lambda: self._headers(event, body),
        )
        dice = self.roll_callback()

        async def deliver() -> None:
            headers = await self.send(callback, dice)
            if headers is not None and dice.reorder:
                # One task lifetime later, callbacks of tasks created after this one have gone out first.
                await asyncio.sleep(max(task.lifetime_s, 0.1))
                await self.deliver(callback, "stale_replay", headers=headers)

        return deliver()

    def _headers(self, event: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Seedancee2-Event": event}
        if self.webhook_secret is not None:
            headers["X-Seedancee2-Signature"] = _sign_callback(self.webhook_secret, int(time.time()), body)
        return headers

    # -- usage ------------------------------------------------------------------------------------------

    def usage(self, owner: str, start: datetime | None, end: datetime | None, limit: int) -> dict[str, Any]:
        now = time.monotonic()
        tasks = [
            task
            for task in self.tasks.values()
            if task.owner == owner
            and (start is None or task.created_at >= start)
            and (end is None or task.created_at <= end)
        ]
        by_model: dict[str, list[_Task]] = {}
        by_day: dict[str, list[_Task]] = {}
        for task in tasks:
            by_model.setdefault(task.request.model, []).append(task)
            by_day.setdefault(task.created_at.date().isoformat(), []).append(task)
        # Assumption: "max daily timeline rows" keeps the most recent days, listed oldest first.
        days = sorted(by_day)[-limit:]
        return {
            # Assumption: an absent bound is echoed as null (the doc only shows both bounds given).
            "range": {
                "start": iso(start) if start is not None else None,
                "end": iso(end) if end is not None else None,
            },
            "summary": _counts(tasks, now),
            "by_model": [{"model": model, **_counts(by_model[model], now)} for model in sorted(by_model)],
            "timeline": [{"date": day, **_counts(by_day[day], now)} for day in days],
        }


# ---------------------------------------------------------------------------------------------------------
# App


def create_seedancee2_sandbox(
    *,
    api_key: str = API_KEY,
    webhook_secret: str | None = WEBHOOK_SECRET,
    knobs: SandboxKnobs | None = None,
    callback_client: httpx.AsyncClient | None = None,
    extra_api_keys: Iterable[str] = (),
) -> Litestar:
    """Build the emulator app.

    Args:
        api_key: Key accepted as `Authorization: Bearer <key>` or `x-api-key: <key>`.
        webhook_secret: Signs callbacks; None emulates an account with webhook signing disabled.
        knobs: Initial chaos settings; replaceable at runtime with `PUT /_sandbox/knobs`.
        callback_client: Client used to POST callbacks; when None one is created on startup and closed on
            shutdown.
        extra_api_keys: More accepted keys, each seeing only its own tasks (to test account isolation).

    `GET /_sandbox/callbacks` logs each attempt with its `event` and a `kind`: `delivery`, `duplicate`,
    `stale_replay` (see `SandboxKnobs.out_of_order_rate`) or `dropped`.
    """
    sandbox = _Seedancee2Sandbox(
        api_keys=frozenset((api_key, *extra_api_keys)),
        webhook_secret=webhook_secret,
        knobs=knobs,
        callback_client=callback_client,
    )

    @post("/v1/videos/generations", status_code=200)
    async def create_generation(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request, create=True)
        task = sandbox.create(owner, await request.body())
        await sandbox.hold()
        created = CreatedTask(
            id=task.id,
            status="pending",
            model=task.request.model,
            credits_reserved=task.credits,
            created_at=iso(task.created_at),
        )
        return json_response(DataEnvelope(created))

    @get("/v1/videos/generations/{task_id:str}")
    async def get_generation(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        return json_response(DataEnvelope(sandbox.owned_task(task_id, owner).view(time.monotonic())))

    @get("/v1/videos/generations")
    async def list_generations(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise _invalid(f"status must be one of {', '.join(STATUSES)}.")
        limit = _parse_limit(request.query_params.get("limit"), default=20, maximum=100)
        now = time.monotonic()
        views: list[TaskView] = []
        for task in reversed(sandbox.tasks.values()):  # newest first; the doc offers no cursor
            if task.owner != owner:
                continue
            view = task.view(now)
            if status is None or view.status == status:
                views.append(view)
            if len(views) == limit:
                break
        return json_response(DataEnvelope(views))

    @get("/v1/models")
    async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
        await sandbox.gate(request)
        models = [
            ModelInfo(
                id=model,
                status="active",
                resolutions=list(rates),
                duration=DurationRange(min=MIN_DURATION_S, max=MAX_DURATION_S),
            )
            for model, rates in RATES.items()
        ]
        return json_response(DataEnvelope(models))

    @get("/v1/usage")
    async def usage(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        params = request.query_params
        start_raw, end_raw = params.get("start"), params.get("end")
        start = _parse_iso(start_raw, "start") if start_raw is not None else None
        end = _parse_iso(end_raw, "end") if end_raw is not None else None
        limit = _parse_limit(params.get("limit"), default=30, maximum=365)
        return json_response(DataEnvelope(sandbox.usage(owner, start, end, limit)))

    return sandbox_app(
        sandbox,
        routes=[create_generation, get_generation, list_generations, list_models, usage],
        outcomes=FORCED,
        exception_handlers={
            SandboxApiError: _on_sandbox_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
    )


SANDBOX = SandboxSpec(
    provider="seedancee2", factory=create_seedancee2_sandbox, api_key=API_KEY, webhook_secret=WEBHOOK_SECRET
)
