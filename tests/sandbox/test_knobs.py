"""The failure knobs (refuse_creates, insufficient_credits, rate_limit, hang_s), over real HTTP, per emulator.

Each emulator must answer in its own provider's documented words: the status, the error body and the headers an
adapter reads to decide between a refusal, a retry and a lost answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from sandbox import SANDBOXES, SandboxKnobs
from tests.harness import serving, url_of
from tests.ports import bind

# Tasks that never move on their own, so a test sees exactly what the knobs made.
STILL = {"processing_after_s": 60, "complete_after_s": 120}


@dataclass(frozen=True)
class Provider:
    name: str
    create_path: str
    create_body: dict[str, Any]
    auth: dict[str, str]
    status_path: str  # a status call for a task that does not exist (any answer but a 429 means not limited)
    refusal: tuple[int, dict[str, Any]]
    out_of_credits: tuple[int, dict[str, Any]]
    retry_after: str | None
    extra: dict[str, Any] = field(default_factory=dict)


PROVIDERS = [
    Provider(
        name="seedancee2",
        create_path="/v1/videos/generations",
        create_body={"model": "mini", "input": {"prompt": "a cat", "duration": 5, "resolution": "720p"}},
        auth={"Authorization": f"Bearer {SANDBOXES['seedancee2'].api_key}"},
        status_path="/v1/videos/generations/vid_missing",
        refusal=(400, {"error": {"code": "invalid_request", "type": "invalid_request_error"}}),
        out_of_credits=(
            402,
            {
                "error": {
                    "code": "insufficient_credits",
                    "message": "Your credit balance is too low. Please top up.",
                    "type": "billing_error",
                }
            },
        ),
        retry_after="1",
    ),
    Provider(
        name="minuit",
        create_path="/ent/v2/text2video",
        create_body={"template": "t2v_high_quality", "prompt": "a cat", "moderation": "disabled"},
        auth={"Authorization": f"Token {SANDBOXES['minuit'].api_key}"},
        status_path="/ent/v2/tasks/mnt_task_missing/creations",
        refusal=(400, {"error": "invalid_json"}),
        out_of_credits=(402, {"error": "quota_exhausted", "message": "Quota exhausted"}),
        retry_after="1",
    ),
    Provider(
        name="mindvideo",
        create_path="/api/v1/tasks",
        create_body={"model": "doubao-seedance-2-0-fast", "input": {"prompt": "a cat"}},
        auth={"Authorization": f"Bearer {SANDBOXES['mindvideo'].api_key}"},
        status_path="/api/v1/tasks/task_missing",
        refusal=(400, {"error": {"code": "invalid_request"}}),
        out_of_credits=(402, {"error": {"code": "insufficient_credits"}}),
        retry_after="1",
    ),
    Provider(
        name="imini",
        create_path="/v1/videos/generate",
        create_body={"model": "doubao/seedance-2.0", "prompt": "a cat"},
        auth={"Authorization": f"Bearer {SANDBOXES['imini'].api_key}"},
        status_path="/v1/videos/tasks/task_0000000000000000000",
        refusal=(400, {"error": {"code": "INVALID_PARAMETER", "status": 400}}),
        out_of_credits=(403, {"error": {"code": "INSUFFICIENT_CREDITS", "status": 403}}),
        retry_after=None,  # none documented: imini's own client waits at least 5 s
    ),
    Provider(
        name="magnific",
        create_path="/v1/ai/video/seedance-2-mini-720p",
        create_body={"prompt": "a cat"},
        auth={"x-magnific-api-key": SANDBOXES["magnific"].api_key},
        status_path="/v1/ai/video/seedance-2-mini/00000000-0000-0000-0000-000000000000",
        refusal=(400, {"message": "Your request has invalid parameters"}),
        out_of_credits=(402, {}),
        retry_after=None,  # Magnific publishes no rate-limit headers
    ),
]


def _contains(body: Any, expected: Any) -> bool:
    """Whether every key of `expected` is in `body` with that value (recursively for objects)."""
    if isinstance(expected, dict):
        return isinstance(body, dict) and all(k in body and _contains(body[k], v) for k, v in expected.items())
    return bool(body == expected)


@asynccontextmanager
async def emulator(provider: Provider, **knobs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The emulator on its own loopback port; the knobs are set over HTTP, as Reelay's tests and the bench do."""
    sock = bind()
    app = SANDBOXES[provider.name].build(SandboxKnobs(**STILL))
    async with serving(app, sock), httpx.AsyncClient(base_url=url_of(sock), timeout=10) as client:
        put = await client.put("/_sandbox/knobs", json={**STILL, **knobs})
        assert put.status_code == 200, put.text
        yield client


async def _create(client: httpx.AsyncClient, provider: Provider, **kwargs: Any) -> httpx.Response:
    return await client.post(provider.create_path, headers=provider.auth, json=provider.create_body, **kwargs)


async def _task_count(client: httpx.AsyncClient) -> int:
    return len((await client.get("/_sandbox/tasks")).json()["tasks"])


@pytest.fixture(params=PROVIDERS, ids=lambda p: p.name)
def provider(request: pytest.FixtureRequest) -> Provider:
    assert isinstance(request.param, Provider)
    return request.param


async def test_refuse_creates_answers_the_documented_bad_request_and_makes_no_task(provider: Provider) -> None:
    async with emulator(provider, refuse_creates=True) as client:
        response = await _create(client, provider)
        status, body = provider.refusal
        assert response.status_code == status, response.text
        assert _contains(response.json(), body), response.text
        assert await _task_count(client) == 0
        # Counted as an attempt, so a test can tell a refused create from one that never arrived.
        creates = (await client.get("/_sandbox/creates")).json()
        assert creates["attempts"] == 1
        assert creates["accepted"] == []
        # Status calls are not creates: they still answer normally (here, the provider's 404).
        assert (await client.get(provider.status_path, headers=provider.auth)).status_code == 404


async def test_refuse_creates_still_answers_401_to_a_bad_key(provider: Provider) -> None:
    async with emulator(provider, refuse_creates=True) as client:
        response = await client.post(provider.create_path, json=provider.create_body)
        assert response.status_code == 401


async def test_insufficient_credits_answers_the_balance_error_and_makes_no_task(provider: Provider) -> None:
    async with emulator(provider, insufficient_credits=True) as client:
        response = await _create(client, provider)
        status, body = provider.out_of_credits
        assert response.status_code == status, response.text
        assert _contains(response.json(), body), response.text
        assert await _task_count(client) == 0


async def test_rate_limit_answers_429_to_every_call_until_cleared(provider: Provider) -> None:
    async with emulator(provider, rate_limit=True) as client:
        for _ in range(3):
            create = await _create(client, provider)
            assert create.status_code == 429, create.text
            assert create.headers.get("retry-after") == provider.retry_after
        assert (await client.get(provider.status_path, headers=provider.auth)).status_code == 429
        assert await _task_count(client) == 0
        assert (await client.put("/_sandbox/knobs", json=STILL)).status_code == 200
        assert (await _create(client, provider)).status_code == 200


async def test_hang_makes_the_task_but_the_caller_loses_the_answer(provider: Provider) -> None:
    async with emulator(provider, hang_s=5.0) as client:
        with pytest.raises(httpx.ReadTimeout):
            await _create(client, provider, timeout=httpx.Timeout(10, read=0.5))
        # The task exists (and is billed) although the caller never saw its id.
        assert await _task_count(client) == 1
        assert len((await client.get("/_sandbox/creates")).json()["accepted"]) == 1


async def test_hang_answers_with_the_task_once_held(provider: Provider) -> None:
    async with emulator(provider, hang_s=0.3) as client:
        response = await _create(client, provider)
        assert response.status_code == 200, response.text
        assert response.elapsed.total_seconds() >= 0.3
        assert await _task_count(client) == 1


def test_knobs_reject_a_negative_hang() -> None:
    with pytest.raises(ValueError, match="hang_s"):
        SandboxKnobs(hang_s=-1)
