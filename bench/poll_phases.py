"""Phases l and l2: the cost of polling many jobs in flight, and a provider's rate budget shared by two replicas.

The provider is imini, which Reelay can only poll. Its emulator runs in a process of its own (`bench/upstream.py`)
with tasks that finish 30 minutes after their create, so no job ends during a phase; the emulator counts every API
call by the second it arrived in (`GET /_sandbox/calls`), which is what a provider's rate limit would count.

Reelay polls at imini's production cadence, set explicitly (`REELAY_IMINI_POLL_*`, from the adapter's default),
and the phases read the schedule back from the settings Reelay parses out of the same variables.

- l. `reelay serve` on SQLite. 10,000 jobs go in through `POST /v1/jobs` (16 at a time); once the emulator has
  accepted every create, the phase waits for the status checks to reach the poll cap (the time that schedule
  takes) and for polling to be steady (nothing overdue, the rate of the last 10 s within 10 % of the 10 s
  before). Then, over the window: polls per second at the emulator, Reelay's CPU (from /proc) per poll and as a
  share of a core, its RSS, and `GET /v1/jobs` at 10/s. Then Reelay restarts on the same database and jobs with
  `REELAY_IMINI_RATE_LIMIT=50`: every second at the emulator from its start on must hold at most 50 calls, and
  `GET /v1/providers` (sampled every second) gives the oldest overdue poll, first while the polls scheduled
  without the budget are served once (each then waits its share of the budget), then over the window.
- l2. PostgreSQL (a throwaway durable cluster), one `--role api` and two `--role worker` processes sharing
  `REELAY_IMINI_RATE_LIMIT=50`; 1,000 jobs go in through the api process. Every second at the emulator from the
  workers' start on must hold at most 50 calls (creates and polls together); the window lasts until every job has
  had its first poll.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.common import CpuMeter, Process, cpu_seconds, http, ms, percentile, rss_bytes, say
from bench.dispatch_phases import job_request
from bench.replicas import ready
from bench.sse import Sender
from bench.target import Database, Key, reelay, reelay_env, upstream
from bench.upstream import CREATED_PATH
from sandbox import SANDBOXES, SandboxKnobs
from service.providers import ADAPTERS
from service.rates import Shape
from service.settings import Settings
from tests.pg import PostgresServer, throwaway_cluster
from tests.ports import free_ports

PROVIDER = "imini"
MODEL = "imini/doubao/seedance-2.0"
RATE_ENV = f"REELAY_{PROVIDER.upper()}_RATE_LIMIT"
LIMIT = 50  # requests per second, in l's second half and in l2
# Tasks finish 30 minutes after their create (the issue says 10): both halves of l then see every job in flight.
KNOBS = SandboxKnobs(processing_after_s=1.0, complete_after_s=1800.0)
JOB_BODY = msgspec.json.encode({"model": MODEL, "input": {"prompt": "a red kite over a grey sea, slow pan"}})
SUBMITTERS = 16  # POST /v1/jobs in flight while seeding
LIST_RATE = 10  # GET /v1/jobs per second during l's windows
STEADY_STEP = 10  # seconds per rate sample in the steadiness check
STEADY_TIMEOUT = 150.0  # after the ramp: past this the window is measured anyway, marked not steady
SETTLE_MORE_SECONDS = 300.0  # l's limited half: how long past one round the backlog may take to clear
CAUGHT_UP = 2.0  # seconds: polling is steady only while no status check is more overdue than this
CREATES_TIMEOUT = 300.0  # for every create to reach the emulator after the last POST


@dataclass(frozen=True)
class Sizes:
    """How big and how long: the issue's numbers, or a smoke run's (`--quick`)."""

    jobs: int
    seconds: float  # measured window of l and of its rate-limited half
    replica_jobs: int
    replica_seconds: float  # l2's window, from the workers' start

    @classmethod
    def of(cls, seconds: float, quick: bool) -> Sizes:
        if quick:
            # 3,000 every 60 s is more than a 50/s budget (~42/s) can poll: the limited half stretches the interval.
            return cls(jobs=3_000, seconds=min(seconds, 20.0), replica_jobs=500, replica_seconds=20.0)
        return cls(jobs=10_000, seconds=seconds, replica_jobs=1_000, replica_seconds=max(20.0, seconds / 2))


def cadence_env() -> dict[str, str]:
    """imini's production cadence (its adapter's default), set explicitly so that Reelay polls as in production."""
    own = ADAPTERS[PROVIDER].poll_schedule
    prefix = f"REELAY_{PROVIDER.upper()}_"
    return {
        prefix + "POLL_INITIAL_SECONDS": f"{own.initial:g}",
        prefix + "POLL_FACTOR": f"{own.factor:g}",
        prefix + "POLL_CAP_SECONDS": f"{own.cap:g}",
    }


def schedule(env: dict[str, str]) -> dict[str, float]:
    """The poll schedule Reelay reads from `env`: its REELAY_<PROVIDER>_POLL_* settings, else the adapter's own
    (as `Runtime.poll_schedule` chooses)."""
    backoff = Settings.from_env(env, adapters=ADAPTERS).provider(PROVIDER).poll_schedule
    backoff = backoff or ADAPTERS[PROVIDER].poll_schedule
    return {f: float(getattr(backoff, f)) for f in ("initial", "factor", "cap", "jitter")}


def polling_settings(env: dict[str, str]) -> dict[str, Any]:
    """The settings Reelay reads from `env` that are about polling or rate limits (whatever they are now)."""
    settings = Settings.from_env(env, adapters=ADAPTERS)
    shown = {k: v for k, v in msgspec.to_builtins(settings).items() if "poll" in k or "lease" in k}
    provider = msgspec.to_builtins(settings.provider(PROVIDER))  # plain data: results.json is JSON
    shown.update({f"{PROVIDER}.{k}": v for k, v in provider.items() if "poll" in k or "rate" in k})
    return shown


def ramp_seconds(plan: dict[str, float]) -> float:
    """From a job's create until its polls come every cap, at the slowest jitter."""
    if plan["factor"] <= 1:
        return plan["initial"] * (1 + plan["jitter"])
    total, delay = 0.0, plan["initial"]
    while delay < plan["cap"]:
        total += delay
        delay *= plan["factor"]
    return total * (1 + plan["jitter"])


def provider_env(url: str, **extra: str) -> dict[str, str]:
    """Reelay's settings for the emulator, at the production cadence; the rate limit only where given (unset:
    unlimited)."""
    spec = SANDBOXES[PROVIDER]
    prefix = f"REELAY_{PROVIDER.upper()}_"
    env = {prefix + "BASE_URL": url, prefix + "API_KEY": spec.api_key, **cadence_env()}
    env.update({prefix + option.upper(): value for option, value in spec.options.items()})
    env.update(extra)
    return env


async def calls(emulator: Process) -> dict[int, int]:
    counted = msgspec.json.decode(await http(emulator.port, "GET", "/_sandbox/calls"))
    return {int(second): count for second, count in counted["per_second"].items()}


async def provider_view(server: Process, key: Key) -> dict[str, Any]:
    answer = await http(server.port, "GET", "/v1/providers", headers={"authorization": f"Bearer {key.secret}"})
    return next(p for p in msgspec.json.decode(answer)["data"] if p["provider"] == PROVIDER)


async def set_knobs(emulator: Process) -> None:
    answer = await http(emulator.port, "PUT", "/_sandbox/knobs", msgspec.json.encode(KNOBS))
    if msgspec.json.decode(answer, type=SandboxKnobs) != KNOBS:
        raise RuntimeError(f"the emulator did not take the knobs: {answer[:300]!r}")


async def submit(server: Process, key: Key, count: int) -> float:
    """`count` jobs through POST /v1/jobs, SUBMITTERS at a time; every one must be answered 202. Returns seconds."""
    sender = Sender(server.port)
    request = job_request(key, JOB_BODY)
    left = count
    began = time.perf_counter()

    async def submitter() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, body = await sender.exchange(request)
            if status != 202:
                raise RuntimeError(f"POST /v1/jobs answered {status}: {body[:300]!r}")

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
    sender.close()
    return time.perf_counter() - began


async def all_created(emulator: Process, count: int) -> None:
    deadline = time.monotonic() + CREATES_TIMEOUT
    while True:
        accepted = msgspec.json.decode(await http(emulator.port, "GET", CREATED_PATH))["accepted"]
        if accepted >= count:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"not within {CREATES_TIMEOUT:g} s: every create at the emulator ({accepted}/{count})")
        await asyncio.sleep(1)


async def next_second() -> int:
    """Sleep to just past the next whole unix second (the emulator counts by them); returns that second."""
    now = time.time()
    await asyncio.sleep(math.floor(now) + 1.02 - now)
    return math.floor(time.time())


def rate(seen: dict[int, int], first: int, last: int) -> float:
    """Mean calls per second over the whole seconds first..last-1."""
    return sum(seen.get(s, 0) for s in range(first, last)) / max(1, last - first)


async def steady(server: Process, emulator: Process, key: Key) -> bool:
    """Until nothing is overdue and the poll rate of the last STEADY_STEP seconds is within 10 % of the step before."""
    deadline = time.monotonic() + STEADY_TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(2)
        now = math.floor(time.time())
        seen = await calls(emulator)
        last, before = rate(seen, now - STEADY_STEP, now), rate(seen, now - 2 * STEADY_STEP, now - STEADY_STEP)
        behind = (await provider_view(server, key))["polls_behind_seconds"] or 0.0
        if behind <= CAUGHT_UP and before > 0 and abs(last - before) <= 0.1 * before:
            return True
    return False


class Window:
    """What Reelay and the emulator did over whole seconds: CPU, polls, RSS, GET /v1/jobs and overdue polls."""

    def __init__(self, server: Process, emulator: Process, key: Key, behind_every: int) -> None:
        self.server, self.emulator, self.key = server, emulator, key
        # GET /v1/providers counts the jobs in flight too: asked every second it would weigh on the CPU per poll.
        self.behind_every = behind_every
        self.list_latencies: list[float] = []
        self.behind: list[float] = []
        self.rss: list[int] = []

    async def measure(self, seconds: float) -> dict[str, Any]:
        first = await next_second()
        meter = CpuMeter()
        server_cpu, emulator_cpu = cpu_seconds(self.server.pid), cpu_seconds(self.emulator.pid)
        samplers = [asyncio.create_task(self._lists(seconds)), asyncio.create_task(self._samples(seconds))]
        await asyncio.sleep(seconds - 0.5)
        await asyncio.gather(*samplers)
        last = await next_second()
        server_cpu = cpu_seconds(self.server.pid) - server_cpu
        emulator_cpu = cpu_seconds(self.emulator.pid) - emulator_cpu
        cpu = meter.read()
        seen = await calls(self.emulator)
        wall = last - first
        polls = sum(seen.get(s, 0) for s in range(first, last))
        middle = first + wall // 2
        return {
            "window_seconds": wall,
            "first_second": first,
            "last_second": last,
            "polls": polls,
            "polls_per_second": round(polls / wall, 1),
            "polls_per_second_halves": [round(rate(seen, first, middle), 1), round(rate(seen, middle, last), 1)],
            "calls_max_in_a_second": max(seen.get(s, 0) for s in range(first, last)),
            "cpu_per_poll_ms": round(1000 * server_cpu / polls, 3) if polls else None,
            "server_cpu_pct": round(100 * server_cpu / wall, 1),
            "upstream_cpu_pct": round(100 * emulator_cpu / wall, 1),
            "rss_mib_max": round(max(self.rss) / 2**20, 1),
            "list_requests": len(self.list_latencies),
            "list_p50_ms": ms(percentile(self.list_latencies, 50)),
            "list_p99_ms": ms(percentile(self.list_latencies, 99)),
            "polls_behind_max_seconds": max(self.behind, default=None),
            "generator_cpu_pct": cpu["generator_cpu_pct"],
            "host_steal_pct": cpu["host_steal_pct"],
        }

    async def _lists(self, seconds: float) -> None:
        """GET /v1/jobs (one page of 20) at LIST_RATE a second, each on its own connection, not waiting for answers."""
        headers = {"authorization": f"Bearer {self.key.secret}"}

        async def one() -> None:
            began = time.perf_counter()
            body = await http(self.server.port, "GET", "/v1/jobs", headers=headers)
            elapsed = time.perf_counter() - began
            if not body.startswith(b'{"data":'):
                raise RuntimeError(f"GET /v1/jobs answered {body[:300]!r}")
            self.list_latencies.append(elapsed)

        began = time.perf_counter()
        pending = []
        for i in range(int(seconds * LIST_RATE)):
            await asyncio.sleep(max(0.0, began + i / LIST_RATE - time.perf_counter()))
            pending.append(asyncio.create_task(one()))
        await asyncio.gather(*pending)

    async def _samples(self, seconds: float) -> None:
        """Reelay's RSS every second, the oldest overdue poll (GET /v1/providers) every `behind_every` seconds."""
        began = time.perf_counter()
        tick = 0
        while time.perf_counter() - began < seconds - 1:
            if tick % self.behind_every == 0:
                self.behind.append((await provider_view(self.server, self.key))["polls_behind_seconds"] or 0.0)
            self.rss.append(rss_bytes(self.server.pid))
            tick += 1
            await asyncio.sleep(max(0.0, 1 - (time.perf_counter() - began) % 1))


# -- l: polling at scale ---------------------------------------------------------------------------


def at_scale(work: Path, sizes: Sizes) -> dict[str, Any]:
    database = Database(f"sqlite:///{work / 'polling.db'}")
    (key,) = asyncio.run(database.keys(1))
    with upstream(work / "upstream-polling.log", PROVIDER) as emulator:
        asyncio.run(set_knobs(emulator))
        port = free_ports(1)
        env = reelay_env(database.url, port, **provider_env(emulator.url))
        plan = schedule(env)
        with reelay(env, work / "reelay-polling.log") as server:
            free = asyncio.run(_free(server, emulator, key, sizes, plan))
        free["settings"] = polling_settings(env)
        # The limited Reelay starts in a second of its own: every call counted from then on is its.
        started = asyncio.run(next_second())
        env = reelay_env(database.url, port, **provider_env(emulator.url, **{RATE_ENV: str(LIMIT)}))
        with reelay(env, work / "reelay-polling-limited.log") as server:
            limited = asyncio.run(_limited(server, emulator, key, sizes, started, plan["cap"]))
        limited["settings"] = polling_settings(env)
    cap = plan["cap"]
    limited["poll_cap_seconds"] = cap
    say(
        f"  l. {free['jobs']:,} {PROVIDER} jobs in flight: {free['polls_per_second']:,.0f} polls/s, "
        f"{free['cpu_per_poll_ms']} ms of Reelay CPU per poll (target <= 0.5), Reelay {free['server_cpu_pct']:.0f}% "
        f"of a core, RSS {free['rss_mib_max']:.0f} MiB; GET /v1/jobs p99 {free['list_p99_ms']:.1f} ms (target <= 20)"
        + ("" if free["steady"] else "; NOT STEADY")
    )
    say(
        f"  l. same, {RATE_ENV}={LIMIT}: at most {limited['calls_max_in_a_second']} calls in a second at the emulator "
        f"(target <= {LIMIT}), {limited['polls_per_second']:.1f} polls/s; oldest overdue poll up to "
        f"{limited['polls_behind_max_seconds']} s (target < {2 * cap:g} s; "
        f"{limited['polls_behind_max_settling_seconds']} s while the polls scheduled without the budget were served), "
        f"each job every {limited['poll_interval_seconds']} s (Reelay says {limited['poll_interval_shown_seconds']})"
    )
    return {"l": free, "l_limited": limited}


async def _free(server: Process, emulator: Process, key: Key, sizes: Sizes, plan: dict[str, float]) -> dict[str, Any]:
    shown = (await provider_view(server, key))["rate_limit"]
    if shown is not None:
        raise RuntimeError(f"GET /v1/providers shows a rate limit for {PROVIDER} ({shown}): this half runs without one")
    seeded = await submit(server, key, sizes.jobs)
    await all_created(emulator, sizes.jobs)
    created = time.perf_counter()
    say(f"  l: {sizes.jobs:,} jobs submitted in {seeded:.0f} s; waiting for their polls to reach the cap")
    await asyncio.sleep(ramp_seconds(plan))
    is_steady = await steady(server, emulator, key)
    waited = time.perf_counter() - created
    result = await Window(server, emulator, key, behind_every=10).measure(sizes.seconds)
    return {
        "provider": PROVIDER,
        "jobs": sizes.jobs,
        "poll_schedule": plan,
        "rate_limit": None,
        "submit_seconds": round(seeded, 1),
        "wait_for_steady_seconds": round(waited, 1),
        "steady": is_steady,
        "list_rate": LIST_RATE,
        **result,
        # In steady state each job is polled once per interval: the cadence as the emulator saw it.
        "poll_interval_seconds": round(sizes.jobs / result["polls_per_second"], 1),
    }


async def _limited(
    server: Process, emulator: Process, key: Key, sizes: Sizes, started: int, cap: float
) -> dict[str, Any]:
    shown = (await provider_view(server, key))["rate_limit"]
    if shown != LIMIT:
        raise RuntimeError(f"GET /v1/providers shows {PROVIDER}'s rate limit as {shown}, not {LIMIT}")
    # The polls the first half scheduled come due at its pace: served once at the budget's rate, each job's next
    # one is then its share of the budget away. Until then the oldest overdue poll says how long that first round is.
    # That round lasts at least the jobs over the budget's rate; it is over once the oldest overdue poll is back
    # under the cap (given at most SETTLE_MORE_SECONDS more, else the window measures the backlog as it is).
    settle = sizes.jobs / Shape(LIMIT).rate + 10
    settling: list[float] = []
    began = time.monotonic()
    while True:
        settling.append((await provider_view(server, key))["polls_behind_seconds"] or 0.0)
        waited = time.monotonic() - began
        if waited >= settle and (settling[-1] <= cap or waited >= settle + SETTLE_MORE_SECONDS):
            break
        await asyncio.sleep(1)
    settle = time.monotonic() - began
    result = await Window(server, emulator, key, behind_every=1).measure(sizes.seconds)
    seen = await calls(emulator)
    # Every second since this Reelay started, not only the window: a budget must hold from its first token.
    result["calls_max_in_a_second"] = max(seen.get(s, 0) for s in range(started, result["last_second"]))
    return {
        "provider": PROVIDER,
        "jobs": sizes.jobs,
        "rate_limit": shown,
        "list_rate": LIST_RATE,
        "settling_seconds": round(settle),
        "polls_behind_max_settling_seconds": max(settling, default=None),
        **result,
        "poll_interval_seconds": round(sizes.jobs / result["polls_per_second"], 1),  # as the emulator saw it
        "poll_interval_shown_seconds": (await provider_view(server, key)).get("poll_interval_seconds"),
    }


# -- l2: two replicas, one budget ------------------------------------------------------------------


def replicas(work: Path, sizes: Sizes) -> dict[str, Any]:
    # Long enough for every job's first poll (at the slowest jitter) to fall inside the window, not only creates.
    plan = schedule(provider_env("http://127.0.0.1:9"))
    seconds = max(sizes.replica_seconds, plan["initial"] * (1 + plan["jitter"]) + 10)
    with throwaway_cluster(durable=True) as cluster:
        result = asyncio.run(_replicas(cluster, work, sizes.replica_jobs, seconds))
    say(
        f"  l2. two workers on PostgreSQL, one {LIMIT}/s budget: at most {result['calls_max_in_a_second']} calls in "
        f"a second at the emulator (target <= {LIMIT}), {result['calls_per_second']:.1f}/s on average"
    )
    return result


async def _replicas(cluster: PostgresServer, work: Path, jobs: int, seconds: float) -> dict[str, Any]:
    async with cluster.database() as url:
        database = Database(url)  # opening the store migrates the schema before any process starts
        (key,) = await database.keys(1)
        with upstream(work / "upstream-replicas.log", PROVIDER) as emulator:
            await set_knobs(emulator)
            api_port = free_ports(3)
            env = {RATE_ENV: str(LIMIT), **provider_env(emulator.url)}
            logs = [work / f"reelay-replicas-{name}.log" for name in ("api", "worker-1", "worker-2")]
            with (
                reelay(reelay_env(url, api_port, **env), logs[0], role="api") as api,
                reelay(reelay_env(url, api_port + 1, **env), logs[1], role="worker") as one,
                reelay(reelay_env(url, api_port + 2, **env), logs[2], role="worker") as two,
            ):
                for process in (api, one, two):
                    await ready(process.port)
                shown = (await provider_view(api, key))["rate_limit"]
                if shown != LIMIT:
                    raise RuntimeError(f"GET /v1/providers shows {PROVIDER}'s rate limit as {shown}, not {LIMIT}")
                first = await next_second()
                cpu = {p.pid: cpu_seconds(p.pid) for p in (one, two)}
                meter = CpuMeter()
                seeded = await submit(api, key, jobs)
                await asyncio.sleep(max(0.0, first + seconds - time.time()))
                last = await next_second()
                workers_cpu = [round(100 * (cpu_seconds(p.pid) - cpu[p.pid]) / (last - first), 1) for p in (one, two)]
                behind = (await provider_view(api, key))["polls_behind_seconds"]
                generator = meter.read()
                seen = await calls(emulator)
    return {
        "provider": PROVIDER,
        "workers": 2,
        "rate_limit": LIMIT,
        "jobs": jobs,
        "submit_seconds": round(seeded, 1),
        "window_seconds": last - first,
        "calls_max_in_a_second": max(seen.values()),  # every second this emulator saw: these replicas' calls only
        "calls_per_second": round(rate(seen, first, last), 1),
        "worker_cpu_pct": workers_cpu,
        "server_cpu_pct": round(sum(workers_cpu), 1),
        "polls_behind_at_end_seconds": behind,
        **generator,
    }
