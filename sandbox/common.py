"""Machinery every provider emulator shares: task timeline, API gate, callback delivery, `/_sandbox/` control routes."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypedDict, TypeVar

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.types import ControllerRouterHandler, ExceptionHandlersMap
from msgspec import UNSET, UnsetType

from sandbox.knobs import Chaos, SandboxKnobs
from sandbox.media import MediaLinks, media_route, new_secret

__all__ = [
    "Callback",
    "CallbackDice",
    "CallbackRecord",
    "SandboxApiError",
    "SandboxCore",
    "SandboxTask",
    "iso",
    "json_response",
    "sandbox_app",
]

OutcomeT = TypeVar("OutcomeT", bound=str)
WordT = TypeVar("WordT", bound=str)
TaskT = TypeVar("TaskT", bound="SandboxTask[Any]")

Phase = Literal["waiting", "running", "terminal"]

# No provider documents a retry backoff; a short one keeps flaky-receiver tests quick.
CALLBACK_BACKOFF_S = 0.2
CALLBACK_TIMEOUT_S = 5.0


def iso(moment: datetime) -> str:
    """Format as the providers' docs do: `2026-06-29T10:00:00.000Z` (UTC, milliseconds)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class SandboxApiError(Exception):
    """An error answer: each emulator's handler writes it in its provider's own error shape.

    `code` is the provider's error word, for the providers whose error bodies carry one; `headers` go out with it
    (e.g. Retry-After on a 429).
    """

    def __init__(
        self, status_code: int, message: str, *, code: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def json_response(value: Any) -> Response[bytes]:
    """Encode with msgspec, so UNSET struct fields are left out exactly as each provider's wire shape wants."""
    return Response(msgspec.json.encode(value), media_type="application/json")


# ---------------------------------------------------------------------------------------------------------
# Tasks


class Schedule(TypedDict):
    """A new task's timeline fields, as `SandboxCore.schedule` fills them from the current knobs."""

    created_mono: float
    processing_after_s: float
    terminal_after_s: float
    created_wall: float
    links: MediaLinks


@dataclass(eq=False, kw_only=True)
class SandboxTask(Generic[OutcomeT]):
    """A task's identity and timeline on the monotonic clock; each emulator adds its request and views."""

    id: str
    owner: str
    created_mono: float
    processing_after_s: float
    # Seconds from creation to the terminal status; shortened when a test forces the outcome.
    terminal_after_s: float
    outcome: OutcomeT
    forced: bool = False
    # The background task that moves this one along and sends its callbacks; cancelled when a test forces it.
    timer: asyncio.Task[None] | None = None
    created_wall: float = 0.0  # unix time of creation: result URLs expire counting from completion
    links: MediaLinks | None = None  # signs its result URLs (None: a task built by hand, with no media)

    def media_url(self, path: str) -> str:
        """The signed, expiring URL of one of its result files (`path` in the provider's own shape)."""
        if self.links is None:
            return f"https://media.sandbox.invalid/{path}"
        return self.links.url(path, self.created_wall + self.terminal_after_s)

    def phase(self, now_mono: float) -> Phase:
        elapsed = now_mono - self.created_mono
        if elapsed >= self.terminal_after_s:
            return "terminal"
        if elapsed >= self.processing_after_s:
            return "running"
        return "waiting"

    def stage(self, now_mono: float, waiting: WordT, running: WordT) -> WordT | OutcomeT:
        """The status in the provider's words: `waiting`, then `running`, then the outcome."""
        phase = self.phase(now_mono)
        if phase == "terminal":
            return self.outcome
        return running if phase == "running" else waiting

    async def sleep_until(self, offset_s: float) -> None:
        await asyncio.sleep(max(0.0, self.created_mono + offset_s - time.monotonic()))

    @property
    def runs(self) -> bool:
        """Whether the task shows its running status before it ends (its timings or a force may skip it)."""
        return self.processing_after_s < self.terminal_after_s

    async def reach_running(self) -> bool:
        """Wait for the running status; False at once when the task goes straight to its end."""
        if not self.runs:
            return False
        await self.sleep_until(self.processing_after_s)
        # asyncio may wake a timer a clock tick early: make the state change happen as of now.
        self.processing_after_s = min(self.processing_after_s, time.monotonic() - self.created_mono)
        return True

    async def reach_terminal(self) -> None:
        await self.sleep_until(self.terminal_after_s)
        # asyncio may wake a timer up to one clock tick early: make the task terminal as of now, so a
        # concurrent force sees it settled and the callback body shows the terminal state.
        self.terminal_after_s = min(self.terminal_after_s, time.monotonic() - self.created_mono)


# ---------------------------------------------------------------------------------------------------------
# Callbacks


class CallbackRecord(msgspec.Struct, kw_only=True):
    """One delivery attempt, as listed by `GET /_sandbox/callbacks`.

    `kind` is `delivery`, `duplicate`, `dropped` or the emulator's word for a reordered callback; `attempt` is 0
    for a dropped callback and `status_code` is null when the request never got an HTTP answer (see `error`).
    The optional fields are the labels only some emulators log; an unset one is left out, so each emulator's
    records keep the fields, and the field order, they have always had.
    """

    task_id: str
    # The message id, for providers whose webhooks carry one (Standard Webhooks).
    webhook_id: str | UnsetType = UNSET
    url: str
    # The event name, for providers that send it in a header.
    event: str | UnsetType = UNSET
    # The status the body reports, under the name the provider's body gives it.
    state: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    kind: str = "delivery"
    attempt: int = 0
    status_code: int | None = None
    error: str | None = None
    # The exact JSON text sent, for emulators whose tests read callback bodies back from the log.
    body: str | UnsetType = UNSET
    at: str = ""


def _plain_json_headers() -> dict[str, str]:
    return {"Content-Type": "application/json"}


@dataclass(frozen=True, kw_only=True)
class Callback:
    """One callback message: its fixed body, the headers of each attempt, and how its log records read."""

    # The fixed part of each attempt's record (task_id, url and labels); the attempt's outcome is stamped on a copy.
    log: CallbackRecord
    body: bytes
    # Asked again for every attempt, so a signing provider stamps each retry afresh.
    headers: Callable[[], dict[str, str]] = _plain_json_headers

    @property
    def url(self) -> str:
        return self.log.url


class CallbackDice(NamedTuple):
    """The chaos decided for one callback when its status changes, not when its delivery runs."""

    drop: bool
    duplicate: bool
    reorder: bool


# ---------------------------------------------------------------------------------------------------------
# State


class SandboxCore(ABC, Generic[TaskT, OutcomeT]):
    """What every emulator keeps: keys, chaos, tasks, the create and callback logs, and background tasks.

    A subclass supplies the provider's words through the abstract hooks (errors, authentication, the control
    views) and, if the provider has webhooks, sets CALLBACK_ATTEMPTS and hands `Callback`s to `send`.
    """

    # POSTs of one callback before giving up; 0 for a provider without webhooks (no client, no lifespan hooks).
    CALLBACK_ATTEMPTS: ClassVar[int] = 0

    def __init__(
        self,
        *,
        api_keys: frozenset[str],
        knobs: SandboxKnobs | None,
        callback_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_keys = api_keys
        self.chaos = Chaos(knobs or SandboxKnobs())
        self.client = callback_client
        self.owns_client = False
        self.tasks: dict[str, TaskT] = {}
        self.create_attempts = 0
        # Provider API calls (creates and status checks, refused ones too) by the unix second they arrived in.
        self.calls_per_second: dict[int, int] = {}
        self.accepted_creates: list[dict[str, Any]] = []
        self.callbacks: list[CallbackRecord] = []
        self.background: set[asyncio.Task[None]] = set()
        # Result URLs point back at this emulator (where the create came in) and are signed with this secret.
        self.media_secret = new_secret()
        self.downloads: dict[str, int] = {}  # result file path -> downloads started
        self.base_url = "http://sandbox.invalid"

    # -- provider hooks ---------------------------------------------------------------------------------

    @abstractmethod
    def authenticate(self, headers: Mapping[str, str]) -> str:
        """Return the caller's API key, or raise the provider's 401."""

    @abstractmethod
    def rate_limited(self) -> Exception:
        """The provider's 429, raised while the `burst_429` knob lasts."""

    @abstractmethod
    def server_error(self) -> Exception:
        """The provider's 5xx, raised while the `burst_5xx` knob lasts."""

    @abstractmethod
    def refusal(self) -> Exception:
        """The provider's documented 400 for a bad request, raised for every create under `refuse_creates`."""

    @abstractmethod
    def out_of_credits(self) -> Exception:
        """The provider's out-of-balance error, raised for every create under `insufficient_credits`."""

    @abstractmethod
    def not_found(self, task_id: str) -> Exception:
        """The provider's 404 for a task that does not exist or belongs to another key."""

    @abstractmethod
    def already_terminal(self, task: TaskT) -> Exception:
        """The 409 answering a force of a task that has already ended."""

    @abstractmethod
    def invalid_knobs(self, message: str) -> Exception:
        """The provider's 400, for a `PUT /_sandbox/knobs` body that is not a valid `SandboxKnobs`."""

    @abstractmethod
    def describe(self, task: TaskT, now_mono: float) -> dict[str, Any]:
        """One item of `GET /_sandbox/tasks`."""

    @abstractmethod
    def forced_view(self, task: TaskT) -> Any:
        """The answer of `POST /_sandbox/tasks/{id}/complete` (or fail...): the task as the provider shows it."""

    def creates_log(self) -> dict[str, Any]:
        """`GET /_sandbox/creates`: accepted create bodies in arrival order, plus the count of every attempt."""
        return {"attempts": self.create_attempts, "accepted": self.accepted_creates}

    # -- lifespan ---------------------------------------------------------------------------------------

    async def startup(self) -> None:
        if self.client is None:
            self.client = httpx.AsyncClient()
            self.owns_client = True

    async def shutdown(self) -> None:
        pending = list(self.background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.owns_client and self.client is not None:
            await self.client.aclose()
            self.client = None
            self.owns_client = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Kept referenced until done (asyncio holds tasks weakly) and cancelled on shutdown.
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    # -- API gate and tasks -----------------------------------------------------------------------------

    async def gate(self, request: Request[Any, Any, Any], *, create: bool = False) -> str:
        """Apply latency, rate limits and bursts, then authenticate, then a create's refusals; return the API key.

        `create=True` counts the call as a create attempt before the gate, so tests can see attempts that were
        rate limited or rejected.
        """
        if create:
            self.create_attempts += 1
        self.base_url = str(request.base_url)
        second = int(time.time())
        self.calls_per_second[second] = self.calls_per_second.get(second, 0) + 1
        knobs = self.chaos.knobs
        if knobs.latency_s > 0:
            await asyncio.sleep(knobs.latency_s)
        if knobs.rate_limit or self.chaos.take_429():
            raise self.rate_limited()
        if self.chaos.take_5xx():
            raise self.server_error()
        owner = self.authenticate(request.headers)
        if create and knobs.refuse_creates:
            raise self.refusal()
        if create and knobs.insufficient_credits:
            raise self.out_of_credits()
        return owner

    async def hold(self) -> None:
        """Hold a create's answer for `hang_s`; called once its task exists, so a caller that gives up lost it."""
        hang_s = self.chaos.knobs.hang_s
        if hang_s > 0:
            await asyncio.sleep(hang_s)

    def schedule(self) -> Schedule:
        """A new task's timeline from the current knobs."""
        knobs = self.chaos.knobs
        # Each task keeps the timings it was created with, so a later knobs change does not rewind it.
        return Schedule(
            created_mono=time.monotonic(),
            processing_after_s=knobs.processing_after_s,
            terminal_after_s=knobs.complete_after_s,
            created_wall=time.time(),
            links=MediaLinks(self.base_url, self.media_secret, knobs.url_ttl_s),
        )

    def owned_task(self, task_id: str, owner: str) -> TaskT:
        task = self.tasks.get(task_id)
        # Another key's task is reported as missing, not forbidden, so ids do not leak across accounts.
        if task is None or task.owner != owner:
            raise self.not_found(task_id)
        return task

    def force(self, task_id: str, outcome: OutcomeT) -> TaskT:
        """End a task now with `outcome` and stop its timer; emulators with callbacks then send the terminal one."""
        task = self.tasks.get(task_id)
        if task is None:
            raise self.not_found(task_id)
        now = time.monotonic()
        if task.phase(now) == "terminal":
            raise self.already_terminal(task)
        task.terminal_after_s = now - task.created_mono
        task.outcome = outcome
        task.forced = True
        if task.timer is not None:
            task.timer.cancel()
        return task

    # -- callbacks --------------------------------------------------------------------------------------

    def roll_callback(self, *, reorder: bool = True) -> CallbackDice:
        """Roll drop, duplicate and (unless `reorder` is False) reorder, in that order, so one seed gives one run."""
        drop = self.chaos.should_drop_callback()
        duplicate = self.chaos.should_duplicate_callback()
        return CallbackDice(drop, duplicate, reorder and self.chaos.should_reorder_callback())

    async def send(self, callback: Callback, dice: CallbackDice, kind: str = "delivery") -> dict[str, str] | None:
        """Deliver as the dice say: drop it (logged only), or send it, then once more if duplicated.

        Returns the headers of the delivery's last attempt, for a provider that replays it later; None if dropped.
        """
        if dice.drop:
            self._record(callback, "dropped", 0, None, None)
            return None
        headers = await self.deliver(callback, kind)
        if dice.duplicate:
            await self.deliver(callback, "duplicate")
        return headers

    async def deliver(self, callback: Callback, kind: str, *, headers: dict[str, str] | None = None) -> dict[str, str]:
        """POST with retries and backoff; each attempt asks for fresh headers unless `headers` are replayed.

        Returns the headers of the last attempt.
        """
        sent = headers or callback.headers()
        for attempt in range(1, self.CALLBACK_ATTEMPTS + 1):
            if attempt > 1:
                await asyncio.sleep(CALLBACK_BACKOFF_S * 2 ** (attempt - 2))
                sent = headers or callback.headers()
            if await self._post_once(callback, kind, attempt, sent):
                break
        return sent

    async def _post_once(self, callback: Callback, kind: str, attempt: int, headers: dict[str, str]) -> bool:
        if self.client is None:
            self._record(callback, kind, attempt, None, "callback client not started (no lifespan)")
            return False
        try:
            response = await self.client.post(
                callback.url, content=callback.body, headers=headers, timeout=CALLBACK_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            self._record(callback, kind, attempt, None, f"{type(exc).__name__}: {exc}")
            return False
        self._record(callback, kind, attempt, response.status_code, None)
        return response.is_success

    def _record(self, callback: Callback, kind: str, attempt: int, status_code: int | None, error: str | None) -> None:
        record = msgspec.structs.replace(
            callback.log, kind=kind, attempt=attempt, status_code=status_code, error=error, at=iso(datetime.now(UTC))
        )
        self.callbacks.append(record)


# ---------------------------------------------------------------------------------------------------------
# App


def _force_route(core: SandboxCore[Any, OutcomeT], action: str, outcome: OutcomeT) -> HTTPRouteHandler:
    @post(f"/_sandbox/tasks/{{task_id:str}}/{action}", status_code=200, name=f"sandbox_{action}")
    async def sandbox_force(task_id: FromPath[str]) -> Response[bytes]:
        return json_response(core.forced_view(core.force(task_id, outcome)))

    return sandbox_force


def _control_routes(core: SandboxCore[Any, OutcomeT], outcomes: Mapping[str, OutcomeT]) -> list[HTTPRouteHandler]:
    """The sandbox-only control endpoints (no auth; never part of the real provider).

    `outcomes` maps each `POST /_sandbox/tasks/{id}/<action>` to the outcome it forces.
    """

    @get("/_sandbox/creates")
    async def sandbox_creates() -> Response[bytes]:
        return json_response(core.creates_log())

    @get("/_sandbox/calls")
    async def sandbox_calls() -> Response[bytes]:
        # API calls per unix second of arrival: what a rate limit at the provider would count.
        return json_response({"per_second": {str(k): v for k, v in sorted(core.calls_per_second.items())}})

    @get("/_sandbox/tasks")
    async def sandbox_tasks() -> Response[bytes]:
        now = time.monotonic()
        return json_response({"tasks": [core.describe(task, now) for task in core.tasks.values()]})

    @get("/_sandbox/knobs")
    async def sandbox_get_knobs() -> Response[bytes]:
        return json_response(core.chaos.knobs)

    @put("/_sandbox/knobs")
    async def sandbox_put_knobs(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Replace the knobs (absent fields take their defaults); burst counters and randomness restart."""
        try:
            knobs = msgspec.json.decode(await request.body(), type=SandboxKnobs)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise core.invalid_knobs(str(exc)) from None
        core.chaos = Chaos(knobs)
        return json_response(knobs)

    @get("/_sandbox/downloads")
    async def sandbox_downloads() -> Response[bytes]:
        # Downloads of result files that started (expired and failed ones not counted), by path.
        return json_response({"downloads": core.downloads})

    @get("/_sandbox/callbacks")
    async def sandbox_callbacks() -> Response[bytes]:
        # Always empty for a provider without webhooks: kept so every emulator has the same control surface.
        return json_response({"callbacks": core.callbacks})

    forces = [_force_route(core, action, outcome) for action, outcome in outcomes.items()]
    return [
        sandbox_creates,
        sandbox_calls,
        sandbox_tasks,
        sandbox_get_knobs,
        sandbox_put_knobs,
        sandbox_downloads,
        *forces,
        sandbox_callbacks,
    ]


def sandbox_app(
    core: SandboxCore[Any, OutcomeT],
    *,
    routes: Sequence[ControllerRouterHandler],
    outcomes: Mapping[str, OutcomeT],
    exception_handlers: ExceptionHandlersMap,
    request_max_body_size: int | None = 10_000_000,  # Litestar's own default
) -> Litestar:
    """The emulator app: the provider's `routes`, then the `/_sandbox/` control routes (see `_control_routes`)."""
    # Only an emulator that sends callbacks needs the client its lifespan opens and closes.
    sends_callbacks = core.CALLBACK_ATTEMPTS > 0
    media = media_route(core.media_secret, lambda: core.chaos, core.downloads)
    return Litestar(
        route_handlers=[*routes, *_control_routes(core, outcomes), media],
        exception_handlers=exception_handlers,
        on_startup=[core.startup] if sends_callbacks else [],
        on_shutdown=[core.shutdown] if sends_callbacks else [],
        request_max_body_size=request_max_body_size,
        openapi_config=None,
        logging_config=None,  # the host process configures logging
    )
