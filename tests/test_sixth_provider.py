"""A sixth provider, defined here and nowhere else, runs a job end to end over real HTTP: its adapter and emulator
are registered through the registries' API, its settings are read from REELAY_LUMEN_* like any provider's, and
`reelay dev` would start its emulator next to the other five. Nothing in service/ or sandbox/ names it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import msgspec
import pytest
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath

from sandbox import SANDBOXES, SandboxKnobs, SandboxSpec, sandbox_registry
from sandbox.common import SandboxApiError, SandboxCore, SandboxTask, json_response, sandbox_app
from service.app import create_app
from service.dev import dev_settings
from service.keys import create_key
from service.lifecycle import Report
from service.providers import ADAPTERS, registry
from service.providers.base import ModelSpec, PollOnlyProvider, Submission, generation_failed, text
from service.schedule import Backoff
from service.settings import Settings
from service.vocabulary import Status
from service.wire import encode_job
from storage import JobRecord, create_store
from tests.harness import Stack, collect_events, serving, url_of
from tests.ports import bind

# ---------------------------------------------------------------------------------------------------------
# The provider: Lumen renders a prompt, has no webhooks, and wants its account's region on every request.

MODEL = ModelSpec(
    id="lumen/v1",
    provider="lumen",
    upstream_model="v1",
    durations=(5, 10),
    default_duration=5,
    resolutions=("720p",),
    default_resolution="720p",
    aspect_ratios=("16:9",),
    inputs=(),
)


class Lumen(PollOnlyProvider):
    name: ClassVar[str] = "lumen"
    default_base_url: ClassVar[str] = "https://api.lumen.invalid"
    extra_settings: ClassVar[tuple[str, ...]] = ("region",)
    models: ClassVar[tuple[ModelSpec, ...]] = (MODEL,)
    unknown_outcome: ClassVar[str] = "fail"
    label: ClassVar[str] = "Lumen"
    statuses: ClassVar[Mapping[str, Status]] = {
        "waiting": "queued",
        "rendering": "processing",
        "done": "succeeded",
        "broken": "failed",
    }
    poll_schedule: ClassVar[Backoff] = Backoff(initial=0.1, factor=1.0, cap=0.1, jitter=0.0)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}", "Lumen-Region": self.settings.options["region"]}

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        body = {"prompt": job.input["prompt"], "seconds": job.input.get("duration", spec.default_duration)}
        answer = await self.call("POST", "/renders", json=body, creates=True)
        return Submission(provider_task_id=answer["id"])

    async def fetch(self, provider_task_id: str) -> Report:
        return self.report(await self.call("GET", f"/renders/{provider_task_id}"))

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        url = text(data.get("video"))
        return {"videos": [{"url": url, "thumbnail_url": None}], "last_frame_url": None} if url else None

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return generation_failed(text(data.get("reason")) or "the provider reported failure", "broken")

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        return text(data.get("id"))

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------------------
# Its emulator, on the machinery every emulator shares.

Outcome = Literal["done", "broken"]


@dataclass(eq=False, kw_only=True)
class _Render(SandboxTask[Outcome]):
    seconds: int

    def view(self, now_mono: float) -> dict[str, Any]:
        word = self.stage(now_mono, "waiting", "rendering")
        body: dict[str, Any] = {"id": self.id, "status": word}
        if word == "done":
            body["video"] = f"https://media.lumen.invalid/{self.id}.mp4"
        elif word == "broken":
            body["reason"] = "the render broke"
        return body


class _LumenSandbox(SandboxCore[_Render, Outcome]):
    def authenticate(self, headers: Mapping[str, str]) -> str:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.api_keys:
            raise SandboxApiError(401, "unknown API key")
        if headers.get("lumen-region") != "eu":
            raise SandboxApiError(403, "this account renders in region eu")
        return token

    def rate_limited(self) -> SandboxApiError:
        return SandboxApiError(429, "slow down")

    def server_error(self) -> SandboxApiError:
        return SandboxApiError(500, "render farm down")

    def refusal(self) -> SandboxApiError:
        return SandboxApiError(400, "bad render request")

    def out_of_credits(self) -> SandboxApiError:
        return SandboxApiError(402, "no render minutes left")

    def not_found(self, task_id: str) -> SandboxApiError:
        return SandboxApiError(404, f"no render {task_id}")

    def already_terminal(self, task: _Render) -> SandboxApiError:
        return SandboxApiError(409, f"render {task.id} has ended")

    def invalid_knobs(self, message: str) -> SandboxApiError:
        return SandboxApiError(400, message)

    def describe(self, task: _Render, now_mono: float) -> dict[str, Any]:
        return {**task.view(now_mono), "seconds": task.seconds}

    def forced_view(self, task: _Render) -> dict[str, Any]:
        return task.view(time.monotonic())


def _on_error(_: Request[Any, Any, Any], exc: SandboxApiError) -> Response[bytes]:
    return Response(msgspec.json.encode({"message": exc.message}), status_code=exc.status_code)


def create_lumen_sandbox(*, api_key: str, knobs: SandboxKnobs | None = None) -> Litestar:
    core = _LumenSandbox(api_keys=frozenset({api_key}), knobs=knobs)

    @post("/renders", status_code=201)
    async def create(request: Request[Any, Any, Any]) -> Response[bytes]:
        owner = await core.gate(request, create=True)
        body = msgspec.json.decode(await request.body())
        render = _Render(
            id=f"rnd_{len(core.tasks) + 1}", owner=owner, seconds=body["seconds"], **core.schedule(), outcome="done"
        )
        core.tasks[render.id] = render
        core.accepted_creates.append(body)
        return json_response({"id": render.id, "status": "waiting"})

    @get("/renders/{render_id:str}")
    async def show(request: Request[Any, Any, Any], render_id: FromPath[str]) -> Response[bytes]:
        owner = await core.gate(request)
        return json_response(core.owned_task(render_id, owner).view(time.monotonic()))

    return sandbox_app(
        core,
        routes=[create, show],
        outcomes={"complete": "done", "fail": "broken"},
        exception_handlers={SandboxApiError: _on_error},
    )


LUMEN_SANDBOX = SandboxSpec(
    provider="lumen", factory=create_lumen_sandbox, api_key="lm_sandbox_key", options={"region": "eu"}
)

# Registration: new registries built from the built-in ones; the built-in ones are not touched.
WITH_LUMEN = registry(*ADAPTERS.values(), Lumen)
SANDBOXES_WITH_LUMEN = sandbox_registry(*SANDBOXES.values(), LUMEN_SANDBOX)


# ---------------------------------------------------------------------------------------------------------
# Tests


async def test_a_sixth_provider_runs_a_job_from_post_to_sse(tmp_path: Path) -> None:
    lumen_sock, reelay_sock = bind(), bind()
    env = {
        "REELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'reelay.db'}",
        "REELAY_PUBLIC_URL": url_of(reelay_sock),
        "REELAY_LUMEN_BASE_URL": url_of(lumen_sock),
        "REELAY_LUMEN_API_KEY": LUMEN_SANDBOX.api_key,
        "REELAY_LUMEN_REGION": "eu",
    }
    settings = Settings.from_env(env, adapters=WITH_LUMEN)
    store = create_store(settings.database_url, encode_job, clock=time.time)  # the app's lifespan opens it
    app = create_app(settings, adapters=WITH_LUMEN, store=store)
    knobs = SandboxKnobs(processing_after_s=0.2, complete_after_s=0.6)
    try:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            serving(LUMEN_SANDBOX.build(knobs), lumen_sock),
            serving(app, reelay_sock),
        ):
            _, key = await create_key(store, "test", now=time.time())
            running = Stack(
                app=app,
                url=url_of(reelay_sock),
                key=key,
                client=client,
                sandbox_urls={"lumen": url_of(lumen_sock)},
                settings=settings,
                store=store,
            )
            models = (await client.get(f"{running.url}/v1/models", headers=running.headers)).json()
            received: list[dict[str, Any]] = []
            connected = asyncio.Event()
            listener = asyncio.create_task(
                collect_events(running, f"{running.url}/v1/events", "job.succeeded", received, connected)
            )
            await connected.wait()
            job = await running.submit(model="lumen/v1", duration=10)
            async with asyncio.timeout(15):
                await listener
            shown = await running.job(job["id"])
            creates = await running.sandbox("lumen", "GET", "/_sandbox/creates")
    finally:
        await store.close()  # an injected store is the caller's to close

    assert "lumen/v1" in {model["id"] for model in models["data"]}
    assert creates["accepted"] == [{"prompt": "a drone shot of waves", "seconds": 10}]
    assert [e["type"] for e in received] == ["job.created", "job.submitted", "job.processing", "job.succeeded"]
    assert {e["job"]["id"] for e in received} == {job["id"]}
    assert shown["status"] == "succeeded"
    assert shown["provider"] == "lumen"
    assert shown["provider_task_id"] == "rnd_1"
    assert shown["output"] == {
        "videos": [{"url": "https://media.lumen.invalid/rnd_1.mp4", "thumbnail_url": None}],
        "last_frame_url": None,
    }
    assert received[-1]["job"] == shown


def test_reelay_dev_starts_the_sixth_emulator_after_the_other_five() -> None:
    settings = dev_settings(8000, 8100, adapters=WITH_LUMEN, sandboxes=SANDBOXES_WITH_LUMEN)
    lumen = settings.provider("lumen")
    assert lumen.base_url == "http://127.0.0.1:8105"
    assert lumen.api_key == LUMEN_SANDBOX.api_key
    assert lumen.options == {"region": "eu"}
    five = [settings.provider(name).base_url for name in SANDBOXES]
    assert five == [f"http://127.0.0.1:{port}" for port in range(8100, 8105)]


def test_registering_the_sixth_provider_leaves_the_built_in_registries_as_they_were() -> None:
    assert "lumen" not in ADAPTERS
    assert "lumen" not in SANDBOXES
    assert list(WITH_LUMEN) == [*ADAPTERS, "lumen"]
    with pytest.raises(TypeError):
        ADAPTERS["lumen"] = Lumen  # type: ignore[index]
