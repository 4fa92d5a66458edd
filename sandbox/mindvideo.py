"""Emulator of the MindVideo API (seed 001) that stands in for the real provider in tests and dev.

It follows the documented contract strictly (Bearer auth, `additionalProperties: false` schemas, Idempotency-Key,
normalized status words) and adds unauthenticated, sandbox-only control endpoints under `/_sandbox/`.
MindVideo sends no callbacks, so the callback knobs (drop, duplicate, out of order) have nothing to act on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET, UnsetType
from ulid import ULID

from sandbox.common import SandboxApiError, SandboxCore, SandboxTask, iso, json_response, sandbox_app
from sandbox.knobs import SandboxKnobs
from sandbox.registry import SandboxSpec

__all__ = ["SANDBOX", "create_mindvideo_sandbox"]

# Reelay's credentials for this emulator: public, sandbox-only values.
API_KEY = "mv_live_sandbox"

Status = Literal["queued", "processing", "succeeded", "failed", "cancelled"]
Outcome = Literal["succeeded", "failed", "cancelled"]
Size = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive"]
Resolution = Literal["480p", "720p"]
Role = Literal["first_frame", "last_frame", "reference_image"]

MODEL = "doubao-seedance-2-0-fast"
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# What `POST /_sandbox/tasks/{id}/<action>` forces; `cancel` as the platform would on its side, since MindVideo
# has `cancelled` but no cancel endpoint.
FORCED: dict[str, Outcome] = {"complete": "succeeded", "fail": "failed", "cancel": "cancelled"}
FRAME_ROLES: tuple[Role, ...] = ("first_frame", "last_frame")
# Assumption: no price table is published; 480p matches the doc's 0.0657 for 5 s, 720p costs twice as much.
USD_PER_SECOND: dict[str, float] = {"480p": 0.01314, "720p": 0.02628}
FAILURE_MESSAGE = "Video generation failed upstream. Please adjust the input and try again."
MAX_IDEMPOTENCY_KEY = 255


# ---------------------------------------------------------------------------------------------------------
# Wire structs: the seed's JSON schema, with `additionalProperties: false` on `input` and on every item.


class ImageWithRole(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    role: Role


class Tool(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["web_search"]


class TaskInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`input` of a create. Defaults are the schema's; explicit nulls are rejected as the schema has no null."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    size: Size = "16:9"
    resolution: Resolution = "480p"
    duration: Annotated[int, msgspec.Meta(ge=4, le=15)] = 5
    generate_audio: bool = False
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | UnsetType = UNSET
    watermark: bool = False
    camera_fixed: bool = False
    return_last_frame: bool = False
    # Lists stay UNSET when absent: the exclusions are about a field being sent at all, even empty.
    image_urls: Annotated[list[str], msgspec.Meta(max_length=9)] | UnsetType = UNSET
    image_with_roles: Annotated[list[ImageWithRole], msgspec.Meta(max_length=9)] | UnsetType = UNSET
    video_urls: Annotated[list[str], msgspec.Meta(max_length=3)] | UnsetType = UNSET
    audio_urls: Annotated[list[str], msgspec.Meta(max_length=3)] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET


class CreateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The envelope; it takes no field besides `model` and `input` (no callback, no metadata)."""

    model: str
    input: TaskInput


class CreatedTask(msgspec.Struct):
    request_id: str
    task_id: str
    status: Status
    cost_estimate: float


class Video(msgspec.Struct):
    url: str


class TaskOutput(msgspec.Struct):
    videos: list[Video]
    # Assumption: the doc shows no last-frame field; Seedance's own `last_frame_url` name is used.
    last_frame_url: str | UnsetType = UNSET


class ErrorBody(msgspec.Struct):
    code: str
    message: str


class TaskView(msgspec.Struct):
    request_id: str
    task_id: str
    status: Status
    cost_estimate: float
    cost_actual: float | UnsetType = UNSET
    output: TaskOutput | UnsetType = UNSET
    error: ErrorBody | UnsetType = UNSET


class TaskEvent(msgspec.Struct):
    status: Status
    created_at: str
    message: str | UnsetType = UNSET


class TaskEvents(msgspec.Struct):
    """`GET /api/v1/tasks/{id}/events`; the shape is not documented (providers.md §2.3 [A]), oldest first."""

    task_id: str
    events: list[TaskEvent]


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


# ---------------------------------------------------------------------------------------------------------
# Errors: everything the emulator answers with goes through the `{"error": {"code", "message"}}` shape.


def _invalid(message: str) -> SandboxApiError:
    return SandboxApiError(400, message, code="invalid_request")


def _error_response(status_code: int, code: str, message: str, headers: dict[str, str]) -> Response[bytes]:
    body = msgspec.json.encode(ErrorEnvelope(ErrorBody(code=code, message=message)))
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def _on_sandbox_error(_: Request[Any, Any, Any], exc: SandboxApiError) -> Response[bytes]:
    return _error_response(exc.status_code, exc.code, exc.message, exc.headers)


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    # Unknown routes and methods are not covered by the doc; keep the error shape anyway.
    if exc.status_code >= 500:
        return _error_response(exc.status_code, "internal_error", "Internal server error.", {})
    return _error_response(exc.status_code, "invalid_request", exc.detail, {})


def _on_unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _error_response(500, "internal_error", f"Internal server error: {exc!r}", {})


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"


def _validate(request: CreateRequest) -> float:
    """Check the cross-field rules the schema states in prose; return the task's cost estimate."""
    if request.model != MODEL:
        raise SandboxApiError(400, f"Model {request.model!r} is not available.", code="model_not_found")
    spec = request.input
    roles = [item.role for item in spec.image_with_roles] if isinstance(spec.image_with_roles, list) else []
    if isinstance(spec.image_urls, list) and isinstance(spec.image_with_roles, list):
        raise _invalid("image_urls cannot be used together with image_with_roles.")
    media = isinstance(spec.video_urls, list) or isinstance(spec.audio_urls, list)
    if any(role in FRAME_ROLES for role in roles) and media:
        raise _invalid("First-frame or last-frame images cannot be used with video_urls or audio_urls.")
    # Assumption: one image per frame role; two first frames have no meaning.
    for role in FRAME_ROLES:
        if roles.count(role) > 1:
            raise _invalid(f"image_with_roles may hold at most one {role} image.")
    has_reference_images = bool(spec.image_urls) or "reference_image" in roles
    if spec.audio_urls and not (has_reference_images or spec.video_urls):
        raise _invalid("audio_urls must be used with reference images or reference videos.")
    return round(USD_PER_SECOND[spec.resolution] * spec.duration, 4)


@dataclass(eq=False, kw_only=True)
class _Task(SandboxTask[Outcome]):
    request_id: str
    idempotency_key: str | None
    request: CreateRequest
    body: Any
    cost: float
    created_at: datetime

    def status(self, now_mono: float) -> Status:
        return self.stage(now_mono, "queued", "processing")

    def view(self, now_mono: float) -> TaskView:
        status = self.status(now_mono)
        view = TaskView(request_id=self.request_id, task_id=self.id, status=status, cost_estimate=self.cost)
        if status in TERMINAL:
            # Assumption: only a succeeded task is charged.
            view.cost_actual = self.cost if status == "succeeded" else 0.0
        if status == "succeeded":
            view.output = TaskOutput(
                videos=[Video(url=self.media_url(f"output/{self.id}.mp4"))],
                last_frame_url=self.media_url(f"output/{self.id}_last_frame.png")
                if self.request.input.return_last_frame
                else UNSET,
            )
        elif status == "failed":
            view.error = ErrorBody(code="generation_failed", message=FAILURE_MESSAGE)
        return view

    def events(self, now_mono: float) -> list[TaskEvent]:
        status = self.status(now_mono)
        events = [TaskEvent(status="queued", created_at=iso(self.created_at))]
        # A task forced to its outcome before it started running never reports `processing`.
        if status != "queued" and self.runs:
            at = self.created_at + timedelta(seconds=self.processing_after_s)
            events.append(TaskEvent(status="processing", created_at=iso(at)))
        if status in TERMINAL:
            at = self.created_at + timedelta(seconds=self.terminal_after_s)
            event = TaskEvent(status=status, created_at=iso(at))
            if status == "failed":
                event.message = FAILURE_MESSAGE
            events.append(event)
        return events


# ---------------------------------------------------------------------------------------------------------
# State


class _MindVideoSandbox(SandboxCore[_Task, Outcome]):
    def __init__(self, api_keys: frozenset[str], knobs: SandboxKnobs | None) -> None:
        super().__init__(api_keys=api_keys, knobs=knobs)
        # (owner, Idempotency-Key) → the task it created; keys are scoped to the account that sent them.
        self.idempotency: dict[tuple[str, str], _Task] = {}
        self.replayed_creates: list[dict[str, Any]] = []

    # -- provider words ---------------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> str:
        # Only `Authorization: Bearer` is documented; there is no x-api-key alternative.
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() in self.api_keys:
            return token.strip()
        raise SandboxApiError(401, "API key is missing, invalid, or disabled.", code="invalid_api_key")

    def rate_limited(self) -> SandboxApiError:
        # 429 is not documented by MindVideo; the code is the emulator's choice.
        return SandboxApiError(
            429, "Too many requests.", code="rate_limited", headers={"Retry-After": str(self.chaos.knobs.retry_after_s)}
        )

    def refusal(self) -> SandboxApiError:
        # Assumption: MindVideo documents no error body; its schema refusal is this emulator's `invalid_request`.
        return _invalid("Input does not match the model schema (sandbox: refuse_creates).")

    def out_of_credits(self) -> SandboxApiError:
        # Assumption: no balance error is documented; the reference expects 402/403 with a JSON `error`: 402 here.
        return SandboxApiError(402, "Insufficient balance. Please top up.", code="insufficient_credits")

    def server_error(self) -> SandboxApiError:
        return SandboxApiError(500, "Internal server error.", code="internal_error")

    def not_found(self, task_id: str) -> SandboxApiError:
        return SandboxApiError(404, f"Task {task_id} was not found.", code="task_not_found")

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
            "idempotency_key": task.idempotency_key,
            "request": task.body,
            "view": task.view(now_mono),
        }

    def forced_view(self, task: _Task) -> TaskView:
        return task.view(time.monotonic())

    def creates_log(self) -> dict[str, Any]:
        """Every create attempt counted; accepted bodies (new tasks) and idempotent replays, in arrival order."""
        return {**super().creates_log(), "replayed": self.replayed_creates}

    # -- create -----------------------------------------------------------------------------------------

    def create(self, owner: str, raw: bytes, idempotency_key: str | None) -> tuple[_Task, bool]:
        """Create a task, or return the one this Idempotency-Key already created for the same payload.

        Returns the task and whether it is such a replay (no new task, no second charge).
        """
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise _invalid(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.")
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise _invalid("Request body is not valid JSON.") from None
        if idempotency_key is not None:
            earlier = self.idempotency.get((owner, idempotency_key))
            if earlier is not None:
                if earlier.body != body:
                    raise SandboxApiError(
                        409, "Idempotency-Key was already used with a different payload.", code="idempotency_conflict"
                    )
                self.replayed_creates.append({"id": earlier.id, "idempotency_key": idempotency_key})
                return earlier, True
        try:
            # Decoded from the raw bytes (not converted from `body`) so JSON types are checked strictly.
            request = msgspec.json.decode(raw, type=CreateRequest)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None
        cost = _validate(request)
        task = _Task(
            id=_new_id("task"),
            request_id=_new_id("req"),
            owner=owner,
            idempotency_key=idempotency_key,
            request=request,
            body=body,
            cost=cost,
            created_at=datetime.now(UTC),
            **self.schedule(),
            outcome="failed" if self.chaos.should_fail() else "succeeded",
        )
        self.tasks[task.id] = task
        if idempotency_key is not None:
            self.idempotency[(owner, idempotency_key)] = task
        self.accepted_creates.append({"id": task.id, "idempotency_key": idempotency_key, "body": body})
        return task, False


# ---------------------------------------------------------------------------------------------------------
# App


def create_mindvideo_sandbox(
    *,
    api_key: str = API_KEY,
    knobs: SandboxKnobs | None = None,
    callback_client: httpx.AsyncClient | None = None,
    extra_api_keys: Iterable[str] = (),
) -> Litestar:
    """Build the emulator app.

    Args:
        api_key: Key accepted as `Authorization: Bearer <key>`.
        knobs: Initial chaos settings; replaceable at runtime with `PUT /_sandbox/knobs`. The callback knobs
            do not apply: MindVideo has no webhooks.
        callback_client: Accepted so every emulator factory takes the same arguments; never used, as
            MindVideo sends no callbacks.
        extra_api_keys: More accepted keys, each seeing only its own tasks (to test account isolation).
    """
    sandbox = _MindVideoSandbox(api_keys=frozenset((api_key, *extra_api_keys)), knobs=knobs)

    @post("/api/v1/tasks", status_code=200)
    async def create_task(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request, create=True)
        task, replayed = sandbox.create(owner, await request.body(), request.headers.get("idempotency-key"))
        await sandbox.hold()
        created = CreatedTask(
            # Each request has its own id; a replay answers with the original task as it is now.
            request_id=_new_id("req") if replayed else task.request_id,
            task_id=task.id,
            status=task.status(time.monotonic()),
            cost_estimate=task.cost,
        )
        return json_response(created)

    @get("/api/v1/tasks/{task_id:str}")
    async def get_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        return json_response(sandbox.owned_task(task_id, owner).view(time.monotonic()))

    @get("/api/v1/tasks/{task_id:str}/events")
    async def get_task_events(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        task = sandbox.owned_task(task_id, owner)
        return json_response(TaskEvents(task_id=task.id, events=task.events(time.monotonic())))

    return sandbox_app(
        sandbox,
        routes=[create_task, get_task, get_task_events],
        outcomes=FORCED,
        exception_handlers={
            SandboxApiError: _on_sandbox_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
    )


SANDBOX = SandboxSpec(provider="mindvideo", factory=create_mindvideo_sandbox, api_key=API_KEY)
