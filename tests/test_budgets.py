"""Per-key budgets over real HTTP against the emulators: the reservation at create (402 `budget_exhausted` with
the numbers, never an overspend under 200 concurrent creates, on SQLite and on PostgreSQL with two server
processes), unpriced models, settlement when a job ends, budget.threshold events, the budget in GET /v1/usage."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from service import budgets
from service.ids import split_api_key
from tests import pg
from tests.harness import Stack, collect_events, serving, stack, url_of
from tests.ports import bind, free_ports
from tests.processes import REELAY, reelay_env, start_role, wait_ready
from tests.receivers import Receiver, receiving

# A job of seedancee2/mini, 5 s at 720p, is 50 credits by the seed prices (10 credits a second).
MINI = {"prompt": "a drone shot of waves", "duration": 5, "resolution": "720p"}
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)  # jobs stay unfinished: nothing is settled
FAST_LIMITS = {"rate_limit_per_second": 100_000.0, "rate_limit_burst": 10_000}


def key_id(running: Stack) -> str:
    parts = split_api_key(running.key)
    assert parts is not None
    return parts[0]


async def set_budget(
    running: Stack, *, usd: str | None = None, credits: str | None = None, period: str = "total"
) -> None:
    await running.store.set_api_key_budget(
        key_id(running),
        usd=None if usd is None else Decimal(usd),
        credits=None if credits is None else Decimal(credits),
        period=period,
    )


async def post_job(running: Stack, model: str = "seedancee2/mini", **fields: Any) -> httpx.Response:
    body = {"model": model, "input": {**MINI, **fields.pop("input", {})}, **fields}
    return await running.client.post(f"{running.url}/v1/jobs", json=body, headers=running.headers)


async def budget(running: Stack) -> dict[str, Any]:
    response = await running.client.get(f"{running.url}/v1/usage", headers=running.headers)
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()["budget"]
    return shown


async def test_402_after_exactly_the_affordable_jobs_with_the_numbers(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as running:
        await set_budget(running, credits="500")
        for _ in range(10):
            assert (await post_job(running)).status_code == 202
        refused = await post_job(running)
        assert refused.status_code == 402, refused.text
        error = refused.json()["error"]
        assert error["code"] == "budget_exhausted"
        assert error["details"] == {
            "unit": "credits",
            "limit": 500,
            "spent": 0,
            "reserved": 500,
            "estimate": 50,
            "period": "total",
            "resets_at": None,
        }
        # Numbers in the JSON itself, with the decimal's digits (never strings, never floats' expansions).
        assert '"limit":500' in refused.text
        assert await budget(running) == {
            "limit_usd": None,
            "limit_credits": 500,
            "period": "total",
            "period_key": "total",
            "spent": {"usd": None, "credits": 0},
            "reserved": {"usd": None, "credits": 500},
            "remaining": {"usd": None, "credits": 0},
            "resets_at": None,
        }


async def test_usage_shows_no_budget_for_a_key_without_one(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as running:
        assert (await post_job(running)).status_code == 202
        assert await budget(running) is None


async def test_200_concurrent_creates_accept_exactly_what_the_budget_fits_on_sqlite(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, **FAST_LIMITS) as running:
        await set_budget(running, credits="2500")  # 50 jobs of 50 credits
        answers = await asyncio.gather(*(post_job(running) for _ in range(200)))
        assert Counter(a.status_code for a in answers) == {202: 50, 402: 150}
        shown = await budget(running)
        assert shown["reserved"]["credits"] == 2500
        assert shown["remaining"]["credits"] == 0


async def test_200_concurrent_creates_on_two_postgresql_replicas_accept_exactly_what_the_budget_fits(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    first = free_ports(2)
    ports = (first, first + 1)
    sandbox_sock = bind()
    async with postgres_server.database() as database_url:
        env = reelay_env(
            tmp_path,
            ports[0],
            {"seedancee2": url_of(sandbox_sock)},
            REELAY_DATABASE_URL=database_url,
            REELAY_RATE_LIMIT_PER_SECOND="100000",
            REELAY_RATE_LIMIT_BURST="10000",
        )
        subprocess.run([REELAY, "migrate"], env=env, check=True, capture_output=True)
        made = subprocess.run(
            [REELAY, "keys", "create", "--name", "team", "--budget-credits", "2500", "--json"],
            env=env,
            capture_output=True,
            check=True,
        )
        headers = {"Authorization": f"Bearer {json.loads(made.stdout)['key']}"}
        log = tmp_path / "replicas.log"
        processes = [start_role(env, "all", port, log) for port in ports]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            async with (
                serving(SANDBOXES["seedancee2"].build(SLOW), sandbox_sock),
                httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=400)) as client,
            ):
                for process, url in zip(processes, urls, strict=True):
                    await wait_ready(client, url, process)
                body = {"model": "seedancee2/mini", "input": MINI}
                answers = await asyncio.gather(
                    *(client.post(f"{urls[i % 2]}/v1/jobs", json=body, headers=headers) for i in range(200))
                )
                statuses = Counter(a.status_code for a in answers)
                by_replica = Counter(urls[i % 2] for i, a in enumerate(answers) if a.status_code == 202)
                usage = (await client.get(f"{urls[1]}/v1/usage", headers=headers)).json()
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()  # a failing run may leave many jobs in flight: let its assertion be seen
                    process.wait(10)
    assert statuses == {202: 50, 402: 150}, (statuses, log.read_text()[-2000:])
    assert len(by_replica) == 2  # both replicas took some: the limit held across them
    assert usage["budget"]["reserved"]["credits"] == 2500


async def test_an_unpriced_model_is_refused_under_a_budget_in_that_unit(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as running:
        await set_budget(running, usd="10")  # Seedancee2 prices in credits only
        refused = await post_job(running)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert "usd" in error["message"]
        assert "REELAY_BUDGET_ALLOW_UNPRICED" in error["message"]
        assert error["details"] == {"field": "model", "unit": "usd", "unpriced": ["seedancee2/mini"]}
        assert (await budget(running))["reserved"]["usd"] == 0


async def test_an_unpriced_model_is_taken_when_the_operator_allows_it(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, budget_allow_unpriced=True) as running:
        await set_budget(running, usd="10")
        created = await post_job(running)
        assert created.status_code == 202, created.text
        stored = await running.store.get_job(created.json()["id"])
        assert stored is not None
        assert stored.reservation == {"period": "total", "usd": "0"}
        assert (await budget(running))["reserved"]["usd"] == 0


async def test_a_job_that_fails_before_any_provider_accepts_it_releases_its_reservation(tmp_path: Path) -> None:
    closed = bind()  # a port nobody answers on: every create fails to connect, the job ends on its deadline
    closed_url = url_of(closed)
    closed.close()
    async with stack(tmp_path, provider_overrides={"seedancee2": {"base_url": closed_url}}) as running:
        await set_budget(running, credits="100")
        created = await post_job(running, deadline_seconds=1)
        assert created.status_code == 202, created.text
        assert (await budget(running))["reserved"]["credits"] == 50
        job = await running.wait_for(created.json()["id"], {"failed"})
        assert job["error"]["code"] == "timeout"
        shown = await budget(running)
        assert (shown["spent"], shown["reserved"]) == ({"usd": None, "credits": 0}, {"usd": None, "credits": 0})


async def test_a_succeeded_job_is_charged_what_the_provider_reported(tmp_path: Path) -> None:
    async with stack(tmp_path) as running:
        await set_budget(running, credits="100")
        created = await post_job(running)
        job = await running.wait_for(created.json()["id"], {"succeeded"})
        assert job["cost"]["credits_charged"] == 50
        shown = await budget(running)
        assert (shown["spent"]["credits"], shown["reserved"]["credits"]) == (50, 0)


async def test_threshold_events_reach_the_keys_stream_and_endpoints_never_a_jobs_webhook_url(tmp_path: Path) -> None:
    receiver = Receiver.scripted()
    async with receiving(receiver) as hooks, stack(tmp_path, knobs=SLOW, webhook_allow_private=True) as running:
        await set_budget(running, credits="100", period="day")
        made = await running.client.post(
            f"{running.url}/v1/webhook-endpoints",
            json={"url": f"{hooks}/endpoint", "events": ["budget.threshold"]},
            headers=running.headers,
        )
        assert made.status_code == 201, made.text
        found: list[dict[str, Any]] = []
        connected = asyncio.Event()
        reader = asyncio.create_task(
            collect_events(running, f"{running.url}/v1/events", "never", found, connected)  # read until cancelled
        )
        await connected.wait()
        # A job's URL that asks for the type still never gets it: the event is the key's, not the job's.
        hook = {"webhook_url": f"{hooks}/job", "webhook_events": ["job.created", "budget.threshold"]}
        # 50 % (nothing), then 80 %, then 100 %.
        assert (await post_job(running, **hook)).status_code == 202
        assert (await post_job(running, input={"resolution": "480p", "duration": 6}, **hook)).status_code == 202
        assert (await post_job(running, input={"resolution": "480p", "duration": 4}, **hook)).status_code == 202
        async with asyncio.timeout(10):
            while sum(e["type"] == "budget.threshold" for e in found) < 2:
                await asyncio.sleep(0.02)
        reader.cancel()
        thresholds = [e for e in found if e["type"] == "budget.threshold"]
        assert [e["detail"]["threshold"] for e in thresholds] == [80, 100]
        assert all(e["job"] is None for e in thresholds)
        period = thresholds[0]["detail"]["period"]
        assert period.startswith("day:")
        assert thresholds[1]["detail"] == {
            "threshold": 100,
            "unit": "credits",
            "limit": 100,
            "spent": 0,
            "reserved": 100,
            "remaining": 0,
            "period": period,
            "resets_at": thresholds[1]["detail"]["resets_at"],
        }
        assert thresholds[1]["detail"]["resets_at"].endswith("T00:00:00Z")
        await receiver.wait_for(5)  # 3 job.created to the jobs' URL, 2 thresholds to the endpoint
        to_endpoint = [g for g in receiver.got if g.path == "/endpoint"]
        assert [g.data["detail"]["threshold"] for g in to_endpoint] == [80, 100]
        assert [json.loads(g.body)["type"] for g in receiver.got if g.path == "/job"] == ["job.created"] * 3


def test_a_limit_in_exponent_notation_is_kept_as_plain_digits() -> None:
    amount = budgets.parse_amount("1e3", "--budget-usd")
    assert (amount, str(amount)) == (Decimal("1000"), "1000")
    assert str(budgets.parse_amount("2.50", "--budget-usd")) == "2.50"
