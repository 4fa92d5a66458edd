"""Emulator of the Magnific Seedance 2.0 Mini API (seed 004) that stands in for the real provider in tests and dev.

It follows the documented contract (`x-magnific-api-key`, the resolution in the create path only, `{"data": ...}`
bodies, UPPERCASE statuses, Standard Webhooks callbacks) strictly, and adds sandbox-only control endpoints under
`/_sandbox/`. Callbacks go out on every status change after the create (IN_PROGRESS, then COMPLETED or FAILED),
the superset of the two documented readings, so an adapter that copes with this copes with completion-only too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET, UnsetType

from sandbox.common import (
    Callback,
    CallbackDice,
    CallbackRecord,
    SandboxApiError,
    SandboxCore,
    SandboxTask,
    json_response,
    sandbox_app,
)
from sandbox.knobs import SandboxKnobs
from sandbox.registry import SandboxSpec

__all__ = ["SANDBOX", "create_magnific_sandbox"]

# Reelay's credentials for this emulator: public, sandbox-only values.
API_KEY = "magnific_sandbox_key"
# Standard Webhooks form: "whsec_" + base64 of the key bytes (here b"magnific-sandbox-secret").
WEBHOOK_SECRET = "whsec_bWFnbmlmaWMtc2FuZGJveC1zZWNyZXQ="  # noqa: S105 - a public sandbox-only secret

T = TypeVar("T")

Status = Literal["CREATED", "IN_PROGRESS", "COMPLETED", "FAILED"]
Outcome = Literal["COMPLETED", "FAILED"]
AspectRatio = Literal[
    "film_horizontal_21_9",
    "widescreen_16_9",
    "classic_4_3",
    "square_1_1",
    "traditional_3_4",
    "social_story_9_16",
    "film_vertical_9_21",
]

CREATE_PATHS = {
    "/v1/ai/video/seedance-2-mini-480p": "480p",
    "/v1/ai/video/seedance-2-mini-720p": "720p",
}
TASKS_PATH = "/v1/ai/video/seedance-2-mini"
# What `POST /_sandbox/tasks/{id}/<action>` forces; `complete` has its own route, for its `?empty=true`.
FORCED: dict[str, Outcome] = {"fail": "FAILED"}
MAX_PROMPT_CHARS = 2000
SEED_MAX = 4294967295
# `.invalid` cannot resolve: these URLs only stand for the 24-hour MP4 links the real API returns.


# ---------------------------------------------------------------------------------------------------------
# Wire structs. Field order is the order the doc shows; UNSET fields are omitted from the JSON.


class CreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The create body. Unknown fields are refused (assumption: it catches `reference_images`, trap 34, and
    misspellings); explicit nulls are refused too, because the doc gives no field as nullable."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PROMPT_CHARS)]
    webhook_url: str | UnsetType = UNSET
    image: Annotated[str, msgspec.Meta(min_length=1)] | UnsetType = UNSET
    image_end: Annotated[str, msgspec.Meta(min_length=1)] | UnsetType = UNSET
    duration: Literal[5, 10] = 5
    aspect_ratio: AspectRatio = "widescreen_16_9"
    camera_fixed: bool = False
    seed: Annotated[int, msgspec.Meta(ge=-1, le=SEED_MAX)] = -1
    enable_safety_checker: bool = True


class DataEnvelope(msgspec.Struct, Generic[T]):
    data: T


class CreatedTask(msgspec.Struct):
    """The create answer, in the doc's field order (it differs from the status answer's)."""

    generated: list[str]
    task_id: str
    status: Status


class TaskView(msgspec.Struct):
    """The status and list item, and (unwrapped) the callback body."""

    task_id: str
    status: Status
    generated: list[str]


class InvalidParam(msgspec.Struct):
    name: str
    reason: str


class Problem(msgspec.Struct):
    """The 400 body, flat as in the doc's example (the schema nests it under `problem`: trap 40)."""

    message: str
    invalid_params: list[InvalidParam]


# ---------------------------------------------------------------------------------------------------------
# Errors: `{"message": ...}` everywhere, and the problem shape for invalid parameters.


class InvalidParams(Exception):
    def __init__(self, params: list[InvalidParam]) -> None:
        super().__init__(params[0].reason)
        self.params = params


def _invalid(name: str, reason: str) -> InvalidParams:
    return InvalidParams([InvalidParam(name=name, reason=reason)])


def _message_response(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    body = msgspec.json.encode({"message": message})
    return Response(body, status_code=status_code, media_type="application/json", headers=dict(headers or {}))


def _on_sandbox_error(_: Request[Any, Any, Any], exc: SandboxApiError) -> Response[bytes]:
    return _message_response(exc.status_code, exc.message, exc.headers)


def _on_invalid_params(_: Request[Any, Any, Any], exc: InvalidParams) -> Response[bytes]:
    body = msgspec.json.encode(Problem(message="Your request has invalid parameters", invalid_params=exc.params))
    return Response(body, status_code=400, media_type="application/problem+json")


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    # Unknown routes and methods are not covered by the doc; keep the documented `{"message"}` shape anyway.
    if exc.status_code >= 500:
        return _message_response(exc.status_code, "Internal Server Error")
    return _message_response(exc.status_code, exc.detail)


def _on_unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _message_response(500, "Internal Server Error")


_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_]+)")
_NAMED_FIELD = re.compile(r"field `([A-Za-z_]+)`")


def _params_of(exc: msgspec.ValidationError) -> list[InvalidParam]:
    """Name the offending field the way the problem body does: msgspec says `at $.field` or `field 'name'`."""
    text = str(exc)
    found = _AT_FIELD.search(text) or _NAMED_FIELD.search(text)
    return [InvalidParam(name=found.group(1) if found else "body", reason=text)]


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _signing_key(secret: str) -> bytes:
    """`whsec_<base64>` is the Standard Webhooks form; anything else is used as its UTF-8 bytes (trap 38)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def _is_url_or_base64(value: str) -> bool:
    """`string<byte>` that also takes URLs (trap 35); assumption: a `data:` URI is neither, so it is refused."""
    if value.startswith(("http://", "https://")):
        return True
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


def sign_callback(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{raw_body}")).

    Deliberately independent of `reelay_signing`, so a bug there cannot be cancelled out by a shared one here.
    """
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode("ascii")


@dataclass(eq=False, kw_only=True)
class _Delivery:
    """One callback message with the chaos decided for it; each attempt is signed afresh, same webhook-id."""

    callback: Callback
    dice: CallbackDice
    kind: str = "delivery"


@dataclass(eq=False, kw_only=True)
class _Task(SandboxTask[Outcome]):
    resolution: str
    request: CreateRequest
    body: Any
    # COMPLETED with nothing in `generated`: the case trap 36 defends against.
    empty: bool = False
    # Callbacks for this task go out one at a time, in the order they were decided.
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: list[_Delivery] = field(default_factory=list)

    def status(self, now_mono: float) -> Status:
        return self.stage(now_mono, "CREATED", "IN_PROGRESS")

    def view(self, now_mono: float) -> TaskView:
        return self.view_as(self.status(now_mono))

    def view_as(self, status: Status) -> TaskView:
        # `generated` stays [] until COMPLETED, as the doc says.
        generated = [] if status != "COMPLETED" or self.empty else [self.media_url(f"{self.resolution}/{self.id}.mp4")]
        return TaskView(task_id=self.id, status=status, generated=generated)


# ---------------------------------------------------------------------------------------------------------
# State


class _MagnificSandbox(SandboxCore[_Task, Outcome]):
    # Retries are not documented by Magnific; a few quick ones (same webhook-id, fresh signature) keep tests short.
    CALLBACK_ATTEMPTS = 3

    def __init__(
        self,
        api_keys: frozenset[str],
        webhook_secret: str,
        knobs: SandboxKnobs | None,
        callback_client: httpx.AsyncClient | None,
    ) -> None:
        super().__init__(api_keys=api_keys, knobs=knobs, callback_client=callback_client)
        self.signing_key = _signing_key(webhook_secret)

    # -- provider words ---------------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> str:
        # Only x-magnific-api-key counts: `Authorization: Bearer` is refused like a missing key (trap 41).
        api_key = headers.get("x-magnific-api-key")
        if not api_key:
            raise SandboxApiError(401, "Missing API key")
        if api_key not in self.api_keys:
            raise SandboxApiError(401, "Invalid API key")
        return api_key

    def rate_limited(self) -> SandboxApiError:
        # Magnific publishes no rate-limit headers, so unlike the knob's default no Retry-After is sent.
        return SandboxApiError(429, "Rate limit exceeded")

    def refusal(self) -> InvalidParams:
        # The documented 400 for invalid parameters (problem+json, flat as in the doc's example).
        return _invalid("body", "Your request has invalid parameters (sandbox: refuse_creates)")

    def out_of_credits(self) -> SandboxApiError:
        # Assumption: Magnific documents no balance error; closest is its documented `{"message"}` error body,
        # sent with 402 as the other resellers' balance errors are (a 4xx refusal, never retried).
        return SandboxApiError(402, "Insufficient credits. Please top up your organisation balance.")

    def server_error(self) -> SandboxApiError:
        return SandboxApiError(500, "Internal Server Error")

    def not_found(self, task_id: str) -> SandboxApiError:
        return SandboxApiError(404, "Task not found")

    def already_terminal(self, task: _Task) -> SandboxApiError:
        return SandboxApiError(409, f"Task {task.id} is already {task.outcome}")

    def invalid_knobs(self, message: str) -> InvalidParams:
        return _invalid("knobs", message)

    def describe(self, task: _Task, now_mono: float) -> dict[str, Any]:
        return {
            "task_id": task.id,
            "resolution": task.resolution,
            "status": task.status(now_mono),
            "outcome": task.outcome,
            "forced": task.forced,
            "webhook_url": task.request.webhook_url or None,
            "request": task.body,
            "view": task.view(now_mono),
        }

    def forced_view(self, task: _Task) -> DataEnvelope[TaskView]:
        return DataEnvelope(task.view(time.monotonic()))

    # -- create -----------------------------------------------------------------------------------------

    def create(self, owner: str, resolution: str, raw: bytes) -> _Task:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise _invalid("body", "Request body is not valid JSON") from None
        try:
            # Decoded from the raw bytes (not converted from `body`) so JSON types are checked strictly.
            request = msgspec.json.decode(raw, type=CreateRequest)
        except msgspec.ValidationError as exc:
            raise InvalidParams(_params_of(exc)) from None
        # Assumption: the doc uses image_end only "together with image"; refusing it alone exposes a dropped frame.
        if not isinstance(request.image_end, UnsetType) and isinstance(request.image, UnsetType):
            raise _invalid("image_end", "image_end requires image")
        for name, image in (("image", request.image), ("image_end", request.image_end)):
            if isinstance(image, str) and not _is_url_or_base64(image):
                raise _invalid(name, f"{name} must be a public URL or base64-encoded image")
        if isinstance(request.webhook_url, str) and not request.webhook_url.startswith(("http://", "https://")):
            raise _invalid("webhook_url", "webhook_url must be an http(s) URI")
        task = _Task(
            id=str(uuid.uuid4()),
            owner=owner,
            resolution=resolution,
            request=request,
            body=body,
            **self.schedule(),
            outcome="FAILED" if self.chaos.should_fail() else "COMPLETED",
        )
        self.tasks[task.id] = task
        self.accepted_creates.append({"task_id": task.id, "resolution": resolution, "body": body})
        if isinstance(request.webhook_url, str):
            task.timer = self.spawn(self._run_timeline(task))
        return task

    def force(self, task_id: str, outcome: Outcome, *, empty: bool = False) -> _Task:
        task = super().force(task_id, outcome)
        task.empty = empty
        if isinstance(task.request.webhook_url, str):
            self.spawn(self._send(task, self._terminal_batch(task)))
        return task

    # -- callbacks --------------------------------------------------------------------------------------

    async def _run_timeline(self, task: _Task) -> None:
        """Post IN_PROGRESS when the task starts and the terminal status when it ends (unless forced first)."""
        # IN_PROGRESS goes out only if the task is running now, not if its timings or a force took it to its end.
        if await task.reach_running() and task.status(time.monotonic()) == "IN_PROGRESS":
            delivery = self._decide(task, "IN_PROGRESS")
            if delivery.dice.reorder:
                task.held.append(delivery)
            else:
                self.spawn(self._send(task, [delivery]))
        await task.reach_terminal()
        self.spawn(self._send(task, self._terminal_batch(task)))

    def _decide(self, task: _Task, status: Status) -> _Delivery:
        """Snapshot the body and roll the dice at the status change, not when the delivery runs.

        Only an IN_PROGRESS callback can be held back to arrive out of order, so only it rolls for that.
        """
        assert isinstance(task.request.webhook_url, str)
        webhook_id = f"msg_{uuid.uuid4().hex}"
        body = msgspec.json.encode(task.view_as(status))
        callback = Callback(
            log=CallbackRecord(task_id=task.id, webhook_id=webhook_id, url=task.request.webhook_url, status=status),
            body=body,
            headers=lambda: self._headers(webhook_id, body),
        )
        return _Delivery(callback=callback, dice=self.roll_callback(reorder=status == "IN_PROGRESS"))

    def _terminal_batch(self, task: _Task) -> list[_Delivery]:
        """The terminal callback, then any IN_PROGRESS callback that was held back to arrive out of order."""
        held, task.held = task.held, []
        for delivery in held:
            delivery.kind = "out_of_order"
        return [self._decide(task, task.outcome), *held]

    async def _send(self, task: _Task, deliveries: list[_Delivery]) -> None:
        async with task.sending:
            for delivery in deliveries:
                await self.send(delivery.callback, delivery.dice, delivery.kind)

    def _headers(self, webhook_id: str, body: bytes) -> dict[str, str]:
        timestamp = int(time.time())
        return {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_callback(self.signing_key, webhook_id, timestamp, body),
        }


# ---------------------------------------------------------------------------------------------------------
# App


def create_magnific_sandbox(
    *,
    api_key: str = API_KEY,
    webhook_secret: str = WEBHOOK_SECRET,
    knobs: SandboxKnobs | None = None,
    callback_client: httpx.AsyncClient | None = None,
    extra_api_keys: Iterable[str] = (),
) -> Litestar:
    """Build the emulator app.

    Chaos knobs: latency, 429 and 500 bursts and failure_rate apply as documented on `SandboxKnobs`; drop and
    duplicate are rolled for every callback (IN_PROGRESS and terminal); out_of_order holds the IN_PROGRESS
    callback back and sends it after the terminal one.

    Args:
        api_key: Key accepted in the `x-magnific-api-key` header.
        webhook_secret: Signs callbacks (Standard Webhooks); `whsec_<base64>` or a raw secret used as UTF-8.
        knobs: Initial chaos settings; replaceable at runtime with `PUT /_sandbox/knobs`.
        callback_client: Client used to POST callbacks; when None one is created on startup and closed on
            shutdown.
        extra_api_keys: More accepted keys, each seeing only its own tasks (to test account isolation).

    `GET /_sandbox/callbacks` logs each attempt with its `webhook_id`, `status` and a `kind`: `delivery`,
    `duplicate`, `out_of_order` (the IN_PROGRESS callback held back until after the terminal one) or `dropped`.
    """
    sandbox = _MagnificSandbox(
        api_keys=frozenset((api_key, *extra_api_keys)),
        webhook_secret=webhook_secret,
        knobs=knobs,
        callback_client=callback_client,
    )

    @post(list(CREATE_PATHS), status_code=200)
    async def create_task(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request, create=True)
        task = sandbox.create(owner, CREATE_PATHS[request.url.path], await request.body())
        await sandbox.hold()
        return json_response(DataEnvelope(CreatedTask(generated=[], task_id=task.id, status="CREATED")))

    # One status path for both resolutions: `-720p/{id}` does not exist (trap 33).
    @get(f"{TASKS_PATH}/{{task_id:str}}")
    async def get_task(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        return json_response(DataEnvelope(sandbox.owned_task(task_id, owner).view(time.monotonic())))

    @get(TASKS_PATH)
    async def list_tasks(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await sandbox.gate(request)
        now = time.monotonic()
        # Newest first; nothing in an item ties a task to the request that created it.
        views = [task.view(now) for task in reversed(sandbox.tasks.values()) if task.owner == owner]
        return json_response(DataEnvelope(views))

    @post("/_sandbox/tasks/{task_id:str}/complete", status_code=200)
    async def sandbox_complete(request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[bytes]:
        """Complete now; `?empty=true` completes with an empty `generated` list."""
        empty = request.query_params.get("empty") == "true"
        return json_response(sandbox.forced_view(sandbox.force(task_id, "COMPLETED", empty=empty)))

    return sandbox_app(
        sandbox,
        routes=[create_task, get_task, list_tasks, sandbox_complete],
        outcomes=FORCED,
        exception_handlers={
            SandboxApiError: _on_sandbox_error,
            InvalidParams: _on_invalid_params,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
    )


SANDBOX = SandboxSpec(
    provider="magnific", factory=create_magnific_sandbox, api_key=API_KEY, webhook_secret=WEBHOOK_SECRET
)
