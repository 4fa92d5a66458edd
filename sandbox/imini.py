"""Emulator of the imini router's Seedance 2.0 video API (seed 003) that stands in for imini in tests and dev.

It follows the documented contract strictly (Bearer auth, upper-case resolutions, typed reference objects,
`extra_params`, status words, `{"error": {code, message, status, request_id}}`) and adds unauthenticated,
sandbox-only control endpoints under `/_sandbox/`. imini has no webhooks: the callback knobs (drop, duplicate,
out of order) do not apply, and `GET /_sandbox/callbacks` is always empty.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET, UnsetType

from sandbox.common import SandboxApiError, SandboxCore, SandboxTask, iso, json_response, sandbox_app
from sandbox.knobs import SandboxKnobs
from sandbox.registry import SandboxSpec

__all__ = ["SANDBOX", "create_imini_sandbox"]

# Reelay's credentials for this emulator: public, sandbox-only values.
API_KEY = "sk-imini-sandbox"

Status = Literal["queued", "processing", "succeeded", "failed"]
Outcome = Literal["succeeded", "failed"]
Resolution = Literal["480P", "720P"]
AspectRatio = Literal["16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"]
ReferenceType = Literal["first_frame", "last_frame", "asset"]
LastFramePlacement = Literal["video", "top"]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed"})
# What `POST /_sandbox/tasks/{id}/<action>` forces.
FORCED: dict[str, Outcome] = {"complete": "succeeded", "fail": "failed"}
MODEL = "doubao/seedance-2.0"
SEED_MIN, SEED_MAX = -1, 2**32 - 1
MAX_BODY_BYTES = 64 * 1024 * 1024  # "total request body <= 64 MB"
FAILURE_MESSAGE = "Video generation failed. Please adjust the prompt or the references and try again."
# Output sizes of Seedance 2.0 per resolution and aspect ratio; "adaptive" renders as 16:9 here [A].
DIMENSIONS: dict[str, dict[str, tuple[int, int]]] = {
    "480P": {
        "16:9": (864, 480),
        "4:3": (736, 544),
        "1:1": (640, 640),
        "3:4": (544, 736),
        "9:16": (480, 864),
        "21:9": (992, 432),
    },
    "720P": {
        "16:9": (1280, 720),
        "4:3": (1112, 834),
        "1:1": (960, 960),
        "3:4": (834, 1112),
        "9:16": (720, 1280),
        "21:9": (1470, 630),
    },
}


# ---------------------------------------------------------------------------------------------------------
# Wire structs. Field order is the order the doc shows; unknown fields and explicit nulls are rejected.


class ImageReference(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """[A] The doc names the list but not the object's fields; `{url, reference_type}` is the assumed shape."""

    url: Annotated[str, msgspec.Meta(min_length=1)]
    reference_type: ReferenceType


class MediaReference(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1)]


class ExtraParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seed: Annotated[int, msgspec.Meta(ge=SEED_MIN, le=SEED_MAX)] | UnsetType = UNSET
    watermark: bool = False
    return_last_frame: bool = False


class CreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    prompt: str | UnsetType = UNSET  # not marked required (trap 25)
    resolution: Resolution = "720P"
    aspect_ratio: AspectRatio = "adaptive"
    duration: Annotated[int, msgspec.Meta(ge=4, le=15)] = 5
    generate_audio: bool = True  # the documented default (trap 24)
    reference_images: Annotated[list[ImageReference], msgspec.Meta(max_length=9)] | UnsetType = UNSET
    reference_videos: Annotated[list[MediaReference], msgspec.Meta(max_length=3)] | UnsetType = UNSET
    reference_audios: Annotated[list[MediaReference], msgspec.Meta(max_length=3)] | UnsetType = UNSET
    extra_params: ExtraParams = msgspec.field(default_factory=ExtraParams)


class CreatedTask(msgspec.Struct):
    """The create answer: no status field (trap 26)."""

    task_id: str
    model: str
    created_at: str
    request_id: str


class Video(msgspec.Struct):
    url: str
    width: int
    height: int
    duration: int
    cover_url: str
    last_frame_url: str | UnsetType = UNSET


class ApiError(msgspec.Struct):
    code: str
    message: str
    # [A] The envelope names `status` without describing it; the HTTP status code is assumed.
    status: int
    request_id: str


class TaskView(msgspec.Struct):
    task_id: str
    status: Status
    model: str
    created_at: str
    completed_at: str | None
    videos: list[Video] | None
    error: ApiError | None
    request_id: str
    last_frame_url: str | UnsetType = UNSET


class ErrorEnvelope(msgspec.Struct):
    error: ApiError


# ---------------------------------------------------------------------------------------------------------
# Errors: every answer that is not a success goes through the `{"error": {...}}` envelope.


def _invalid(message: str) -> SandboxApiError:
    return SandboxApiError(400, message, code="INVALID_PARAMETER")


def _error_response(status_code: int, code: str, message: str) -> Response[bytes]:
    body = ErrorEnvelope(ApiError(code=code, message=message, status=status_code, request_id=str(uuid.uuid4())))
    return Response(msgspec.json.encode(body), status_code=status_code, media_type="application/json")


def _on_sandbox_error(_: Request[Any, Any, Any], exc: SandboxApiError) -> Response[bytes]:
    return _error_response(exc.status_code, exc.code, exc.message)


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    # Unknown routes, methods and oversized bodies are not covered by the doc; keep the envelope anyway.
    if exc.status_code >= 500:
        return _error_response(exc.status_code, "INTERNAL_ERROR", "Internal server error.")
    code = "NOT_FOUND" if exc.status_code == 404 else "INVALID_PARAMETER"
    return _error_response(exc.status_code, code, exc.detail)


def _on_unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _error_response(500, "INTERNAL_ERROR", f"Internal server error: {exc!r}")


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _validate(request: CreateRequest) -> None:
    """Check the rules the struct cannot express: the model, the prompt and the reference combinations."""
    if request.model != MODEL:
        raise _invalid(f"model must be {MODEL}.")
    images = request.reference_images or []
    videos = request.reference_videos or []
    audios = request.reference_audios or []
    if isinstance(request.prompt, str) and not request.prompt.strip():
        raise SandboxApiError(400, "prompt must not be blank.", code="INVALID_PROMPT")
    # [A] A task with neither a prompt nor a reference has nothing to generate from.
    if isinstance(request.prompt, UnsetType) and not (images or videos):
        raise SandboxApiError(400, "prompt is required when no reference is given.", code="INVALID_PROMPT")
    kinds = [image.reference_type for image in images]
    frames = kinds.count("first_frame") + kinds.count("last_frame")
    if kinds.count("first_frame") > 1 or kinds.count("last_frame") > 1:
        raise _invalid("reference_images takes at most one first_frame and one last_frame.")
    if "last_frame" in kinds and "first_frame" not in kinds:
        raise _invalid("a last_frame reference needs a first_frame reference.")
    if frames and (frames != len(kinds) or videos or audios):
        raise _invalid("first_frame/last_frame references cannot be combined with asset, video or audio references.")
    if audios and not (images or videos):
        raise _invalid("reference_audios cannot be used alone; add a reference image or video.")
    for video in videos:
        if not video.url.startswith(("https://", "http://")):
            raise _invalid("reference_videos accepts public URLs only.")
    for url in [image.url for image in images] + [audio.url for audio in audios]:
        if not url.startswith(("https://", "http://", "data:")):
            raise _invalid("reference url must be an http(s) URL or a data URI.")


def _new_task_id(taken: Mapping[str, Any]) -> str:
    # Always 19 digits, so above 2**53: a client that parses the id as a number corrupts it (trap 30).
    while (task_id := f"task_{10**18 + secrets.randbelow(9 * 10**18)}") in taken:
        pass
    return task_id


@dataclass(eq=False, kw_only=True)
class _Task(SandboxTask[Outcome]):
    request: CreateRequest
    body: Any
    created_at: datetime
    error_request_id: str
    polls: int = 0

    def status(self, now_mono: float) -> Status:
        return self.stage(now_mono, "queued", "processing")

    def view(self, now_mono: float, placement: LastFramePlacement) -> TaskView:
        status = self.status(now_mono)
        view = TaskView(
            task_id=self.id,
            status=status,
            model=MODEL,
            created_at=iso(self.created_at),
            completed_at=None,
            videos=None,
            error=None,
            request_id=f"req_{uuid.uuid4().hex}",
        )
        if status in TERMINAL:
            view.completed_at = iso(self.created_at + timedelta(seconds=self.terminal_after_s))
        if status == "succeeded":
            spec = self.request
            width, height = DIMENSIONS[spec.resolution].get(spec.aspect_ratio, DIMENSIONS[spec.resolution]["16:9"])
            # [A] Where the last frame appears is not documented; the placement is a factory option.
            last_frame = self.media_url(f"frames/{self.id}.png") if spec.extra_params.return_last_frame else None
            video = Video(
                url=self.media_url(f"videos/{self.id}.mp4"),
                width=width,
                height=height,
                duration=spec.duration,
                cover_url=self.media_url(f"covers/{self.id}.jpg"),
            )
            if last_frame is not None and placement == "video":
                video.last_frame_url = last_frame
            if last_frame is not None and placement == "top":
                view.last_frame_url = last_frame
            view.videos = [video]
        elif status == "failed":
            view.error = ApiError(
                code="GENERATION_FAILED", message=FAILURE_MESSAGE, status=500, request_id=self.error_request_id
            )
        return view


# ---------------------------------------------------------------------------------------------------------
# State


class _IminiSandbox(SandboxCore[_Task, Outcome]):
    def __init__(
        self,
        api_keys: frozenset[str],
        knobs: SandboxKnobs | None,
        task_quota: int | None,
        last_frame_placement: LastFramePlacement,
    ) -> None:
        super().__init__(api_keys=api_keys, knobs=knobs)
        self.task_quota = task_quota
        self.last_frame_placement = last_frame_placement

    # -- provider words ---------------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> str:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() in self.api_keys:
            return token.strip()
        # [A] The 401 code is not in the documented list.
        raise SandboxApiError(401, "Missing or invalid API key.", code="UNAUTHORIZED")

    def rate_limited(self) -> SandboxApiError:
        # [A] No Retry-After header is documented; imini's own client waits at least 5 s.
        return SandboxApiError(429, "Too many requests. Please retry later.", code="RATE_LIMITED")

    def refusal(self) -> SandboxApiError:
        return _invalid("Invalid request parameters (sandbox: refuse_creates).")

    def out_of_credits(self) -> SandboxApiError:
        # The documented balance error is a 403 (errors.md: "Forbidden or quota exhausted"), as `task_quota` gives.
        return SandboxApiError(403, "Insufficient credits. Please top up.", code="INSUFFICIENT_CREDITS")

    def server_error(self) -> SandboxApiError:
        return SandboxApiError(500, "Internal server error.", code="INTERNAL_ERROR")

    def not_found(self, task_id: str) -> SandboxApiError:
        return SandboxApiError(404, f"Task {task_id} not found.", code="TASK_NOT_FOUND")

    def already_terminal(self, task: _Task) -> SandboxApiError:
        return SandboxApiError(409, f"Task {task.id} is already {task.outcome}.", code="TASK_ALREADY_TERMINAL")

    def invalid_knobs(self, message: str) -> SandboxApiError:
        return _invalid(message)

    def describe(self, task: _Task, now_mono: float) -> dict[str, Any]:
        return {
            "task_id": task.id,
            "status": task.status(now_mono),
            "outcome": task.outcome,
            "forced": task.forced,
            "polls": task.polls,
            # What imini would do with the request, defaults applied (audio is on unless turned off).
            "effective": task.request,
            "request": task.body,
        }

    def forced_view(self, task: _Task) -> TaskView:
        return task.view(time.monotonic(), self.last_frame_placement)

    # -- create -----------------------------------------------------------------------------------------

    def create(self, owner: str, raw: bytes) -> _Task:
        try:
            body = msgspec.json.decode(raw)
            # Decoded from the raw bytes so JSON types are checked strictly ("5" is not a duration).
            request = msgspec.json.decode(raw, type=CreateRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _invalid(str(exc)) from None
        _validate(request)
        if self.task_quota is not None:
            if self.task_quota <= 0:
                raise SandboxApiError(403, "Insufficient credits. Please top up.", code="INSUFFICIENT_CREDITS")
            self.task_quota -= 1
        task = _Task(
            id=_new_task_id(self.tasks),
            owner=owner,
            request=request,
            body=body,
            created_at=datetime.now(UTC),
            **self.schedule(),
            outcome="failed" if self.chaos.should_fail() else "succeeded",
            error_request_id=str(uuid.uuid4()),
        )
        self.tasks[task.id] = task
        self.accepted_creates.append({"task_id": task.id, "body": body})
        return task


# ---------------------------------------------------------------------------------------------------------
# App


def create_imini_sandbox(
    *,
    api_key: str = API_KEY,
    knobs: SandboxKnobs | None = None,
    extra_api_keys: Iterable[str] = (),
    task_quota: int | None = None,
    last_frame_placement: LastFramePlacement = "video",
) -> Litestar:
    """Build the emulator app.

    Args:
        api_key: Key accepted as `Authorization: Bearer <key>`.
        knobs: Initial chaos settings; replaceable at runtime with `PUT /_sandbox/knobs`. The callback knobs
            are ignored: imini sends no callbacks.
        extra_api_keys: More accepted keys, each seeing only its own tasks (to test account isolation).
        task_quota: How many more tasks the account can pay for (None: unlimited); then 403 INSUFFICIENT_CREDITS.
        last_frame_placement: Where a requested last frame appears: on each video (`video`) or at the top level
            of the task (`top`), the two places the adapter must read.
    """
    sandbox = _IminiSandbox(
        api_keys=frozenset((api_key, *extra_api_keys)),
        knobs=knobs,
        task_quota=task_quota,
        last_frame_placement=last_frame_placement,
    )

    @post("/v1/videos/generate", status_code=200)
    async def generate(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request, create=True)
        task = sandbox.create(owner, await request.body())
        await sandbox.hold()
        created = CreatedTask(
            task_id=task.id, model=MODEL, created_at=iso(task.created_at), request_id=str(uuid.uuid4())
        )
        return json_response(created)

    @get("/v1/videos/tasks/{task_id:str}")
    async def get_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        task = sandbox.owned_task(task_id, owner)
        task.polls += 1
        return json_response(task.view(time.monotonic(), sandbox.last_frame_placement))

    return sandbox_app(
        sandbox,
        routes=[generate, get_task],
        outcomes=FORCED,
        exception_handlers={
            SandboxApiError: _on_sandbox_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
        request_max_body_size=MAX_BODY_BYTES,
    )


SANDBOX = SandboxSpec(provider="imini", factory=create_imini_sandbox, api_key=API_KEY)
