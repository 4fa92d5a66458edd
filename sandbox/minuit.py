"""Emulator of the Minuit API (seed 000) that stands in for the real provider in tests and dev.

It follows the documented contract strictly (paths, `Token` auth, flat `{"error", "message"}` bodies, quota in
the create answer, `state` words, unsigned callbacks on every state change) and adds unauthenticated,
sandbox-only control endpoints under `/_sandbox/`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET, UnsetType

from sandbox.common import (
    Callback,
    CallbackRecord,
    SandboxApiError,
    SandboxCore,
    SandboxTask,
    json_response,
    sandbox_app,
)
from sandbox.knobs import SandboxKnobs
from sandbox.registry import SandboxSpec

__all__ = ["SANDBOX", "create_minuit_sandbox"]

# Reelay's credentials for this emulator: public, sandbox-only values.
API_KEY = "mn_live_sandbox"

State = Literal["queueing", "processing", "success", "failed"]
Outcome = Literal["success", "failed"]
Resolution = Literal["480p", "720p", "1080p"]
AspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive"]
Urls = Annotated[list[str], msgspec.Meta(max_length=3)]
Prompt = Annotated[str, msgspec.Meta(min_length=1)]

TERMINAL: frozenset[str] = frozenset({"success", "failed"})
# What `POST /_sandbox/tasks/{id}/<action>` forces.
FORCED: dict[str, Outcome] = {"complete": "success", "fail": "failed"}
WAN = "wan2.7-i2v-spicy"
# Credits per second by resolution (seed 000, "Pricing reference").
RATES = {"480p": 16, "720p": 34, "1080p": 85}
WAN_RESOLUTIONS = ("720p", "1080p")
# The only moderation value the doc gives.
MODERATION_VALUES = ("disabled",)
# Assumption: the failure text and the Vidu err_code that Minuit passes through.
FAILURE_CODE = "CreationPolicyViolation"
FAILURE_MESSAGE = "The generated video did not pass the content review."


# ---------------------------------------------------------------------------------------------------------
# Wire structs: one per create endpoint, unknown fields refused; UNSET fields are omitted from the JSON.


class TextRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    template: Literal["t2v_high_quality"]
    prompt: Prompt
    resolution: Resolution = "720p"
    aspect_ratio: AspectRatio | UnsetType = UNSET
    duration: int = 5
    audio: bool = False
    callback_url: str | UnsetType = UNSET
    moderation: str


class ImageRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Both i2v paths: the `i2v_high_quality` template or the Wan 2.7 `model`, told apart after decoding."""

    template: Literal["i2v_high_quality"] | UnsetType = UNSET
    model: Literal["wan2.7-i2v-spicy"] | UnsetType = UNSET
    images: list[str] | UnsetType = UNSET
    image: str | UnsetType = UNSET
    prompt: Prompt
    video_urls: Urls | UnsetType = UNSET
    audio_urls: Urls | UnsetType = UNSET
    resolution: Resolution = "720p"
    aspect_ratio: AspectRatio | UnsetType = UNSET
    duration: int = 5
    # The doc lists `audio` twice: default false for the template, true for Wan.
    audio: bool | UnsetType = UNSET
    negative_prompt: str | UnsetType = UNSET
    audio_url: str | UnsetType = UNSET
    prompt_extend: bool | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    moderation: str
    callback_url: str | UnsetType = UNSET


class ReferenceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    template: Literal["r2v_high_quality"]
    images: Annotated[list[str], msgspec.Meta(max_length=9)] | UnsetType = UNSET
    prompt: Prompt
    video_urls: Urls | UnsetType = UNSET
    audio_urls: Urls | UnsetType = UNSET
    resolution: Resolution = "720p"
    aspect_ratio: AspectRatio | UnsetType = UNSET
    duration: int = 5
    audio: bool = False
    callback_url: str | UnsetType = UNSET
    moderation: str


CreateRequest = TextRequest | ImageRequest | ReferenceRequest


class Quota(msgspec.Struct):
    cost: int
    rate_per_second: int
    duration: int
    resolution: str
    model: str
    # Assumption: Wan tasks have no template, shown as null.
    template: str | None
    unit: str
    remaining: int
    total_credits: int
    used_credits: int


class CreatedTask(msgspec.Struct):
    task_id: str
    state: State
    quota: Quota


class Creation(msgspec.Struct):
    url: str


class TaskView(msgspec.Struct):
    """The GET creations body; callbacks carry the same shape. `err_*` appear on failure only."""

    id: str
    task_id: str
    state: State
    creations: list[Creation]
    err_code: str | UnsetType = UNSET
    err_msg: str | UnsetType = UNSET


class ErrorBody(msgspec.Struct):
    error: str
    message: str


# ---------------------------------------------------------------------------------------------------------
# Errors: everything the emulator answers with goes through the documented flat shape.


def _invalid(message: str) -> SandboxApiError:
    # The doc's 400 codes: invalid_json covers "malformed or missing required input", missing_image the image.
    return SandboxApiError(400, message, code="invalid_json")


def _missing_image(message: str) -> SandboxApiError:
    return SandboxApiError(400, message, code="missing_image")


def _error_response(status_code: int, code: str, message: str, headers: dict[str, str]) -> Response[bytes]:
    body = msgspec.json.encode(ErrorBody(error=code, message=message))
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def _on_sandbox_error(_: Request[Any, Any, Any], exc: SandboxApiError) -> Response[bytes]:
    return _error_response(exc.status_code, exc.code, exc.message, exc.headers)


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    # Unknown routes and methods are not covered by the doc; keep the documented shape anyway.
    if exc.status_code >= 500:
        return _error_response(exc.status_code, "internal_error", "Unexpected server error.", {})
    return _error_response(exc.status_code, "not_found" if exc.status_code == 404 else "invalid_json", exc.detail, {})


def _on_unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _error_response(500, "internal_error", f"Unexpected server error: {exc!r}", {})


# ---------------------------------------------------------------------------------------------------------
# Validation beyond what the structs express


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """What a valid create asks for, whichever endpoint it came through."""

    model: str
    template: str | None
    resolution: str
    duration: int


def _is_media(value: str) -> bool:
    return value.startswith(("https://", "http://", "data:"))


def _check_common(request: CreateRequest, durations: range) -> None:
    if request.moderation not in MODERATION_VALUES:
        raise _invalid(f"moderation must be one of: {', '.join(MODERATION_VALUES)}.")
    if request.duration == -1:
        # Assumption: automatic duration "when enabled by the upstream template" is not enabled for sandbox keys.
        raise _invalid("Automatic duration (-1) is not enabled for this template.")
    if request.duration not in durations:
        raise _invalid(f"duration must be between {durations.start} and {durations.stop - 1} seconds.")
    if isinstance(request.callback_url, str) and not request.callback_url.startswith(("http://", "https://")):
        raise _invalid("callback_url must be an http(s) URL.")


def _check_images(images: list[str]) -> None:
    if not all(_is_media(image) for image in images):
        raise _invalid("Each image must be an http(s) URL or a data URI.")


def _plan_text(request: TextRequest) -> _Plan:
    _check_common(request, range(4, 16))
    return _Plan(
        model="high_quality", template=request.template, resolution=request.resolution, duration=request.duration
    )


def _plan_image(request: ImageRequest) -> _Plan:
    wan = isinstance(request.model, str)
    if wan == isinstance(request.template, str):
        raise _invalid("Send either template i2v_high_quality or model wan2.7-i2v-spicy.")
    images = request.images if isinstance(request.images, list) else []
    if isinstance(request.image, str):
        if isinstance(request.images, list):
            raise _invalid("Use either images or image, not both.")
        images = [request.image]
    if not images:
        raise _missing_image("A first-frame image is required in images or image.")
    if len(images) != 1:
        raise _invalid("Image-to-video takes exactly one image.")
    _check_images(images)
    _check_common(request, range(2, 16) if wan else range(4, 16))
    if wan:
        if request.resolution not in WAN_RESOLUTIONS:
            raise _invalid(f"{WAN} supports resolution {' or '.join(WAN_RESOLUTIONS)}.")
        # Wan's documented options do not include these template fields.
        for name in ("video_urls", "audio_urls", "aspect_ratio"):
            if not isinstance(getattr(request, name), UnsetType):
                raise _invalid(f"{name} is not supported by {WAN}.")
        if isinstance(request.audio_url, str) and not request.audio_url.startswith("https://"):
            raise _invalid("audio_url must be an https URL.")
        return _Plan(model=WAN, template=None, resolution=request.resolution, duration=request.duration)
    for name in ("negative_prompt", "audio_url", "prompt_extend", "seed"):
        if not isinstance(getattr(request, name), UnsetType):
            raise _invalid(f"{name} is only supported by {WAN}.")
    return _Plan(
        model="high_quality", template="i2v_high_quality", resolution=request.resolution, duration=request.duration
    )


def _plan_reference(request: ReferenceRequest) -> _Plan:
    if not isinstance(request.images, list) or not request.images:
        raise _missing_image("Reference generation needs one to nine images.")
    _check_images(request.images)
    _check_common(request, range(4, 16))
    return _Plan(
        model="high_quality", template=request.template, resolution=request.resolution, duration=request.duration
    )


ENDPOINTS: dict[str, tuple[type[CreateRequest], Callable[[Any], _Plan]]] = {
    "/ent/v2/text2video": (TextRequest, _plan_text),
    "/ent/v2/img2video": (ImageRequest, _plan_image),
    "/ent/v2/reference2video": (ReferenceRequest, _plan_reference),
}


# ---------------------------------------------------------------------------------------------------------
# State


@dataclass(eq=False, kw_only=True)
class _Task(SandboxTask[Outcome]):
    path: str
    body: Any
    callback_url: str | None
    # Set once the terminal callback has gone out (or was dropped): a held-back processing callback waits for it.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def state(self, now_mono: float) -> State:
        return self.stage(now_mono, "queueing", "processing")

    def view(self, now_mono: float) -> TaskView:
        state = self.state(now_mono)
        view = TaskView(id=self.id, task_id=self.id, state=state, creations=[])
        if state == "success":
            view.creations = [Creation(url=self.media_url(f"{self.id}/generated-result.mp4"))]
        elif state == "failed":
            view.err_code = FAILURE_CODE
            view.err_msg = FAILURE_MESSAGE
        return view


class _MinuitSandbox(SandboxCore[_Task, Outcome]):
    # Vidu, which Minuit copies, retries a failed delivery 3 times; the short backoff keeps tests quick.
    CALLBACK_ATTEMPTS = 4

    def __init__(
        self,
        api_keys: frozenset[str],
        knobs: SandboxKnobs | None,
        callback_client: httpx.AsyncClient | None,
        quota_credits: int,
    ) -> None:
        super().__init__(api_keys=api_keys, knobs=knobs, callback_client=callback_client)
        self.quota_credits = quota_credits
        self.used: dict[str, int] = dict.fromkeys(api_keys, 0)

    # -- provider words ---------------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> str:
        authorization = headers.get("authorization")
        api_key = headers.get("x-api-key")
        if authorization is None and api_key is None:
            raise SandboxApiError(401, "API key is missing.", code="missing_api_key")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            # The scheme is Token; a Bearer client is refused even with the right key.
            if scheme.lower() == "token" and token.strip() in self.api_keys:
                return token.strip()
        if api_key is not None and api_key in self.api_keys:
            return api_key
        raise SandboxApiError(401, "API key is invalid, disabled or expired.", code="invalid_api_key")

    def rate_limited(self) -> SandboxApiError:
        # Minuit documents no 429; the code is the emulator's choice (Vidu says TooManyRequests).
        return SandboxApiError(
            429, "Too many requests.", code="rate_limited", headers={"Retry-After": str(self.chaos.knobs.retry_after_s)}
        )

    def refusal(self) -> SandboxApiError:
        return _invalid("The request body is malformed or missing required input (sandbox: refuse_creates).")

    def out_of_credits(self) -> SandboxApiError:
        # The doc's own example body; the `quota_credits` argument reaches the same answer by spending.
        return SandboxApiError(402, "Quota exhausted", code="quota_exhausted")

    def server_error(self) -> SandboxApiError:
        # 502 upstream_error is the only server error Minuit documents.
        return SandboxApiError(502, "The generation service failed the task. Retry later.", code="upstream_error")

    def not_found(self, task_id: str) -> SandboxApiError:
        return SandboxApiError(404, f"Task {task_id} was not found.", code="task_not_found")

    def already_terminal(self, task: _Task) -> SandboxApiError:
        return SandboxApiError(409, f"Task {task.id} is already {task.outcome}.", code="task_already_terminal")

    def invalid_knobs(self, message: str) -> SandboxApiError:
        return _invalid(message)

    def describe(self, task: _Task, now_mono: float) -> dict[str, Any]:
        return {
            "task_id": task.id,
            "state": task.state(now_mono),
            "outcome": task.outcome,
            "forced": task.forced,
            "path": task.path,
            "callback_url": task.callback_url,
            "request": task.body,
            "view": task.view(now_mono),
        }

    def forced_view(self, task: _Task) -> TaskView:
        return task.view(time.monotonic())

    # -- create -----------------------------------------------------------------------------------------

    def create(self, owner: str, path: str, raw: bytes) -> tuple[_Task, Quota]:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise _invalid("Request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _invalid("Request body must be a JSON object.")
        struct, plan_of = ENDPOINTS[path]
        try:
            # Decoded from the raw bytes so JSON types are checked strictly (no "5" for 5, no 5.5 for an int).
            request = msgspec.json.decode(raw, type=struct)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None
        plan = plan_of(request)
        # Assumption: Wan 2.7 has no published price; it is charged at the template rates.
        rate = RATES[plan.resolution]
        cost = rate * plan.duration
        used = self.used[owner]
        if used + cost > self.quota_credits:
            raise SandboxApiError(402, "Quota exhausted", code="quota_exhausted")
        self.used[owner] = used + cost
        task = _Task(
            id=f"mnt_task_{secrets.token_hex(12)}",
            owner=owner,
            path=path,
            body=body,
            callback_url=request.callback_url if isinstance(request.callback_url, str) else None,
            **self.schedule(),
            outcome="failed" if self.chaos.should_fail() else "success",
        )
        self.tasks[task.id] = task
        self.accepted_creates.append({"task_id": task.id, "path": path, "body": body})
        if task.callback_url is not None:
            task.timer = self.spawn(self._progress(task))
        quota = Quota(
            cost=cost,
            rate_per_second=rate,
            duration=plan.duration,
            resolution=plan.resolution,
            model=plan.model,
            template=plan.template,
            unit="second",
            remaining=self.quota_credits - self.used[owner],
            total_credits=self.quota_credits,
            used_credits=self.used[owner],
        )
        return task, quota

    def force(self, task_id: str, outcome: Outcome) -> _Task:
        task = super().force(task_id, outcome)
        if task.callback_url is not None:
            self._emit(task)
        return task

    # -- callbacks --------------------------------------------------------------------------------------

    async def _progress(self, task: _Task) -> None:
        """Send a callback at each state change: queueing → processing, then processing → terminal."""
        if await task.reach_running():
            self._emit(task)
        await task.reach_terminal()
        self._emit(task)

    def _emit(self, task: _Task) -> None:
        """Snapshot the body and roll the dice now (synchronously), then deliver in the background.

        Out of order means a processing callback is held back until the terminal one has gone out.
        Unsigned, as Minuit documents no signature.
        """
        assert task.callback_url is not None
        view = task.view(time.monotonic())
        body = msgspec.json.encode(view)
        callback = Callback(
            log=CallbackRecord(task_id=task.id, url=task.callback_url, state=view.state, body=body.decode()),
            body=body,
        )
        terminal = view.state in TERMINAL
        dice = self.roll_callback()
        late = dice.reorder and not terminal

        async def deliver() -> None:
            try:
                if late:
                    await task.settled.wait()
                await self.send(callback, dice, "late" if late else "delivery")
            finally:
                if terminal:
                    task.settled.set()

        self.spawn(deliver())


# ---------------------------------------------------------------------------------------------------------
# App


def create_minuit_sandbox(
    *,
    api_key: str = API_KEY,
    knobs: SandboxKnobs | None = None,
    callback_client: httpx.AsyncClient | None = None,
    extra_api_keys: Iterable[str] = (),
    quota_credits: int = 10_000_000,
) -> Litestar:
    """Build the emulator app.

    Args:
        api_key: Key accepted as `Authorization: Token <key>` or `x-api-key: <key>`.
        knobs: Initial chaos settings; replaceable at runtime with `PUT /_sandbox/knobs`. Every knob applies;
            drop, duplicate and out-of-order are rolled for each callback (processing and terminal alike).
        callback_client: Client used to POST callbacks; when None one is created on startup and closed on
            shutdown.
        extra_api_keys: More accepted keys, each seeing only its own tasks (to test ownership).
        quota_credits: Credits each key starts with; a create that would exceed them answers 402.

    `GET /_sandbox/callbacks` logs each attempt with its `state`, the exact `body` sent and a `kind`: `delivery`,
    `duplicate`, `late` (a processing callback held back until after the terminal one) or `dropped`.
    """
    sandbox = _MinuitSandbox(
        api_keys=frozenset((api_key, *extra_api_keys)),
        knobs=knobs,
        callback_client=callback_client,
        quota_credits=quota_credits,
    )

    async def create(request: Request[Any, Any, Any], path: str) -> Response[bytes]:
        owner = await sandbox.gate(request, create=True)
        task, quota = sandbox.create(owner, path, await request.body())
        await sandbox.hold()
        return json_response(CreatedTask(task_id=task.id, state="queueing", quota=quota))

    @post("/ent/v2/text2video", status_code=200)
    async def text2video(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await create(request, "/ent/v2/text2video")

    @post("/ent/v2/img2video", status_code=200)
    async def img2video(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await create(request, "/ent/v2/img2video")

    @post("/ent/v2/reference2video", status_code=200)
    async def reference2video(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await create(request, "/ent/v2/reference2video")

    @get("/ent/v2/tasks/{task_id:str}/creations")
    async def creations(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        return json_response(sandbox.owned_task(task_id, owner).view(time.monotonic()))

    return sandbox_app(
        sandbox,
        routes=[text2video, img2video, reference2video, creations],
        outcomes=FORCED,
        exception_handlers={
            SandboxApiError: _on_sandbox_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
    )


# Minuit refuses creates without a moderation value; "disabled" is the documented one.
SANDBOX = SandboxSpec(
    provider="minuit", factory=create_minuit_sandbox, api_key=API_KEY, options={"moderation": "disabled"}
)
