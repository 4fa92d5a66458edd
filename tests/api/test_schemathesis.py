"""API fuzzing: schemathesis against Reelay's own OpenAPI document (`GET /schema`), over real HTTP.

One Reelay with all five provider emulators runs for the module on loopback, in a thread of its own (schemathesis
calls are blocking). Before fuzzing, jobs are seeded on every model (some succeed, some fail, one is cancelled), so
that documented response bodies are checked against real jobs, outputs, errors and costs, and so that the
`{job_id}` operations are called with real ids as well as generated ones.

Phases: examples, coverage (boundary values, missing or malformed parameters, unexpected methods) and fuzzing, each
with positive and negative (schema-violating) inputs. Hooks steer part of the input towards success: `{job_id}` is
often a seeded job's id, and every other job body gets a real model id with only its prompt (mostly a 202).

For every operation, every response must:
- never be a 5xx (`not_a_server_error`);
- have a documented status code, content type and body schema (`status_code_conformance`,
  `content_type_conformance`, `response_schema_conformance`);
- carry the documented response headers (`response_headers_conformance`: `Retry-After` on a 429);
- if 4xx or 5xx, be in the error shape `{"error": {"code": str, "message": str, "details": {...}}}` (`error_shape`,
  below).
Invalid inputs must be refused (`negative_data_rejection`), so the documented parameter constraints are real.

Server-sent event streams (`/v1/events`, `/v1/jobs/{job_id}/events`) never end by themselves: each call reads
for at most `REELAY_FUZZ_SSE_SECONDS` (default 0.3) and the events it got are validated one by one against the
documented event schema (a stream cut short is not judged as a whole).

Environment:
- `REELAY_FUZZ_EXAMPLES`: generated examples per operation in the fuzzing phase (default 50). The coverage
  phase adds a bounded, deterministic set of boundary and negative cases on top.
- `REELAY_FUZZ_SEED`: a seed, to replay a run (default: random; printed with the request count under `-s`).
- `REELAY_FUZZ_SSE_SECONDS`: how long each event-stream call reads (default 0.3).

Webhook operations are called without provider signatures, so they mostly answer 401 (or 404 for a provider that is
not served here): both documented. The per-key rate limit is off for this server, as 429s would only hide coverage.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.hooks import HookContext
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from sandbox import SANDBOXES, SandboxKnobs
from service.app import create_app
from service.providers import all_models
from service.settings import Settings
from service.wire import ASPECT_RATIOS, RESOLUTIONS
from tests.harness import Stack, stack

EXAMPLES = int(os.environ.get("REELAY_FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("REELAY_FUZZ_SEED") or random.randrange(1 << 32))
SSE_SECONDS = float(os.environ.get("REELAY_FUZZ_SSE_SECONDS", "0.3"))
FIRST_FRAME = "https://example.com/first.png"
SEEDS: list[tuple[str, dict[str, Any]]] = [
    ("seedancee2/pro", {"resolution": "480p", "return_last_frame": True}),
    ("seedancee2/mini", {"resolution": "480p"}),
    ("minuit/high_quality", {"resolution": "480p"}),
    ("minuit/wan2.7-i2v-spicy", {"resolution": "720p", "first_frame": FIRST_FRAME}),
    ("mindvideo/doubao-seedance-2-0-fast", {"resolution": "480p"}),
    ("imini/doubao/seedance-2.0", {"resolution": "480p"}),
    ("magnific/seedance-2-mini", {"resolution": "480p", "aspect_ratio": "16:9"}),
]
KNOBS = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, failure_rate=0.4, seed=11)


# -- a Reelay in a thread ---------------------------------------------------------------------------------------


@dataclass
class Running:
    url: str
    key: str
    statuses: Counter[int] = field(default_factory=Counter)


async def _seed(s: Stack) -> list[str]:
    """Jobs in every terminal status on every model, and a few that stay running, for the fuzzer to cancel."""
    ids = []
    for round_ in range(2):
        for model, extra in SEEDS:
            ids.append((await s.submit(model, prompt=f"seed {round_}", duration=5, **extra))["id"])
    for job_id in ids:
        await s.wait_for(job_id, {"succeeded", "failed"}, timeout=30)
    cancelled = (await s.submit("seedancee2/fast", resolution="720p"))["id"]
    await s.client.post(f"{s.url}/v1/jobs/{cancelled}/cancel", headers=s.headers)
    slow = {**msgspec.to_builtins(KNOBS), "processing_after_s": 0.0, "complete_after_s": 3600.0}
    await s.sandbox("imini", "PUT", "/_sandbox/knobs", json=slow)
    running = [(await s.submit("imini/doubao/seedance-2.0", prompt=f"running {i}"))["id"] for i in range(3)]
    return [*ids, cancelled, *running]


async def _seed_webhooks(s: Stack) -> tuple[list[str], list[str]]:
    """Webhook endpoints with deliveries (a test delivery, and jobs' events), for the `{endpoint_id}` and
    `{delivery_id}` operations: the first two for every operation but DELETE, the others for DELETE."""
    endpoints, deliveries = [], []
    for events in (["*"], ["job.created", "job.failed"], ["*"], ["*"]):
        body = {"url": "https://receiver.invalid/fuzz", "events": events}
        endpoint = (await s.client.post(f"{s.url}/v1/webhook-endpoints", json=body, headers=s.headers)).json()
        endpoints.append(endpoint["id"])
        test = await s.client.post(f"{s.url}/v1/webhook-endpoints/{endpoint['id']}/test", headers=s.headers)
        deliveries.append(test.json()["id"])
    job = await s.submit("seedancee2/pro", resolution="480p")
    found = await s.client.get(f"{s.url}/v1/jobs/{job['id']}/deliveries", headers=s.headers)
    deliveries += [d["id"] for d in found.json()["data"]]
    return endpoints, deliveries


@pytest.fixture(scope="module")
def reelay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Reelay and the five emulators, served by an event loop in a background thread."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        found["stop"] = (asyncio.get_running_loop(), stop)
        try:
            async with stack(
                tmp, providers=tuple(SANDBOXES), knobs=KNOBS, sse_heartbeat_seconds=60.0, rate_limit_per_second=0.0
            ) as s:
                KNOWN_IDS["job_id"][:] = await _seed(s)
                endpoints, KNOWN_IDS["delivery_id"][:] = await _seed_webhooks(s)
                KNOWN_IDS["endpoint_id"][:], KNOWN_IDS["deletable_endpoint_id"][:] = endpoints[:2], endpoints[2:]
                found["running"] = Running(url=s.url, key=s.key)
                ready.set()
                await stop.wait()
        except BaseException as exc:
            found["error"] = exc
            raise
        finally:
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="reelay-fuzz", daemon=True)
    thread.start()
    ready.wait(90)
    if "running" not in found:
        raise RuntimeError("Reelay did not start") from found.get("error")
    running: Running = found["running"]
    try:
        yield running
    finally:
        print(
            f"\nschemathesis: {running.statuses.total()} requests, by status {dict(sorted(running.statuses.items()))}, "
            f"seed {SEED}"
        )
        loop, stop = found["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


# -- the schema under test ----------------------------------------------------------------------------------
# Generated by the same code that serves `GET /schema` (test_the_fuzzed_document_is_the_served_one checks they are
# equal); loaded at import because the pytest integration parametrizes at collection, before any server runs.

DOCUMENT: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(create_app(Settings()).openapi_schema.to_schema()))
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "request-timeout": 10,
        "max-stream-events": 50,
        "suppress-health-check": ["all"],
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES,
            "database": "none",
            "with-security-parameters": False,
        },
        "phases": {"stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
# Filled by the `reelay` fixture before the first case is drawn.
KNOWN_IDS: dict[str, list[str]] = {"job_id": [], "endpoint_id": [], "delivery_id": [], "deletable_endpoint_id": []}


@schema.hook("flatmap_path_parameters")
def real_ids(context: HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """`{job_id}`, `{endpoint_id}` and `{delivery_id}` are generated strings or, as often, ones this API key really
    has (a job in any status, a webhook endpoint, a delivery)."""
    names = [name for name in KNOWN_IDS if name in (path_parameters or {})]
    if not path_parameters or not names:
        return st.just(path_parameters)
    generated: dict[str, Any] = path_parameters
    # DELETE gets endpoints of its own, so that the other operations keep theirs to work on.
    deleting = context.operation is not None and context.operation.method.lower() == "delete"

    def pick(index: int) -> dict[str, Any]:  # at draw time: the ids exist once the server runs
        picked = dict(generated)
        for name in names:
            known = KNOWN_IDS["deletable_endpoint_id" if deleting else name]
            if index >= 0 and known:
                picked[name] = known[index % len(known)]
        return picked

    return st.integers(-1, 1 << 16).map(pick)


MODEL_IDS = sorted(all_models())


@schemathesis.hook("before_call")  # a global-only hook: it leaves cases of any other schema alone
def real_models(context: HookContext, case: Case[Any], kwargs: dict[str, Any]) -> None:
    """Every other generated job body gets a real model and keeps only its prompt, so that creates are accepted
    (202, 200 on an idempotent repeat, 409 on a reused key) too. Edits made here are re-checked by schemathesis,
    so such a case counts as positive or negative by what is actually sent."""
    body = case.body
    if case.operation.schema.raw_schema is not DOCUMENT or case.path != "/v1/jobs" or not isinstance(body, dict):
        return
    if zlib.crc32(repr(body).encode()) % 2:
        return
    given = body.get("input")
    prompt = given.get("prompt") if isinstance(given, dict) else None
    if isinstance(prompt, str):
        body["model"] = MODEL_IDS[zlib.crc32(prompt.encode()) % len(MODEL_IDS)]
        body["input"] = {"prompt": prompt}


def error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx and 5xx answer is `{"error": {"code": str, "message": str, "details": {...}}}` (JSON); an answer
    to HEAD has its headers and no body."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    content_type = response.headers.get("content-type", [""])[0]
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        content_type.startswith("application/json")
        and isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("details"), dict)
    ):
        raise AssertionError(
            f"error response not in the error shape: {response.status_code} {content_type}: {response.content[:300]!r}"
        )
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]


@schema.parametrize()
def test_every_response_is_documented(case: Case[Any], reelay: Running) -> None:
    streaming = case.path.endswith("/events")
    auth = {"Authorization": f"Bearer {reelay.key}"}
    response = case.call(base_url=reelay.url, headers=auth, timeout=SSE_SECONDS if streaming else 10)
    reelay.statuses[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


# -- the document itself ------------------------------------------------------------------------------------


def test_the_fuzzed_document_is_the_served_one(reelay: Running) -> None:
    assert httpx.get(f"{reelay.url}/schema", timeout=10).json() == DOCUMENT


def test_the_document_is_valid_openapi_3_1(reelay: Running) -> None:
    document = httpx.get(f"{reelay.url}/schema", timeout=10).json()
    assert document["openapi"].startswith("3.1.")
    OPENAPI_31_VALIDATOR.validate(document)
    schemathesis.openapi.from_dict(document).validate()
    # The validator does catch a broken document.
    broken = {**document, "paths": {"/x": {"get": {"responses": {"200": {"content": 7}}}}}}
    assert not OPENAPI_31_VALIDATOR.is_valid(broken)


def test_every_error_is_documented_in_the_error_shape(reelay: Running) -> None:
    document = httpx.get(f"{reelay.url}/schema", timeout=10).json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == error_ref, where
            if path.startswith("/v1/"):
                streams = ("/v1/events", "/v1/jobs/{job_id}/events")  # the only ones a stream token opens
                token = [{"streamToken": []}] if path in streams else []
                security = operation["security"]
                if path == "/v1/jobs/{job_id}/content":  # a signed asset URL needs no key
                    assert security[-1] == {}, where
                    security = security[:-1]
                assert security == [{"bearer": []}, {"apiKey": []}, *token], where
                assert {"401", "429", "503"} <= set(responses), where
                assert responses["429"]["headers"]["Retry-After"]["required"] is True, where
            if any(f"{{{name}}}" in path for name in KNOWN_IDS) and path.startswith("/v1/"):
                assert "404" in responses, where
            if method in {"post", "patch"}:
                assert "413" in responses or "requestBody" not in operation, where
            for parameter in operation.get("parameters", []):
                if parameter["in"] in {"query", "header"}:
                    assert "oneOf" not in parameter["schema"], f"{where} {parameter['name']}: never null"
    create = document["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"200", "202", "400", "401", "409", "413", "415", "503"} <= set(create)
    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"code", "message", "details"}
    assert body["properties"]["details"]["type"] == "object"  # never a list, never null


def test_documented_enums_cover_every_model() -> None:
    for spec in all_models().values():
        assert set(spec.resolutions) <= set(RESOLUTIONS), spec.id
        assert set(spec.aspect_ratios) <= set(ASPECT_RATIOS), spec.id
