"""The machine, the versions, the targets, and the tables written to bench/RESULTS.md and the README."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT

PACKAGES = ("litestar", "msgspec", "uvicorn", "uvloop", "httptools", "aiosqlite", "asyncpg", "structlog")


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "commit": _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres_version(),
        "wrk": _run(["wrk", "-v"]).split(" [")[0],
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def _os_name() -> str:
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    found = re.search(r'^PRETTY_NAME="?([^"\n]+)', release, re.MULTILINE)
    return found.group(1) if found else platform.system()


def _postgres_version() -> str:
    from tests.pg import server_binaries

    binaries = server_binaries()
    return _run([str(binaries / "postgres"), "--version"]) if binaries else "not installed"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- targets ---------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the benchmark issue with the measured value and whether it holds."""
    rows: list[dict[str, Any]] = []

    def row(phase: str, what: str, value: str, target: str, met: bool | None) -> None:
        rows.append({"phase": phase, "what": what, "value": value, "target": target, "met": met})

    a = results.get("a")
    if a:
        row("a", "ceiling: bare Litestar no-op POST", f"{a['per_second']:,.0f}/s, p99 {a['p99_ms']:.2f} ms", "", None)
    for phase, what in (("b", "signed Seedancee2 webhooks"), ("c", "POST /v1/jobs -> 202")):
        got = results.get(phase)
        if got and a:
            ratio = got["per_second"] / a["per_second"]
            value = (
                f"{got['per_second']:,.0f}/s ({ratio:.2f} x a), p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms"
            )
            errors = got["non_2xx"] + got["socket_errors"]  # not in the rate, which counts 2xx answers only
            if errors:
                value += f"; {errors:,} requests failed"
            row(phase, what, value, ">= 0.5 x a", ratio >= 0.5 and not errors)
    normal = results.get("b_normal")
    if normal and a:
        ratio = normal["per_second"] / a["per_second"]
        value = f"{normal['per_second']:,.0f}/s ({ratio:.2f} x a), p99 {normal['p99_ms']:.1f} ms"
        row("b", "same, REELAY_SQLITE_SYNCHRONOUS=NORMAL", value, "(for comparison)", None)
    d = results.get("d")
    if d:
        at_1k, at_10k = (d[f"rss_per_subscriber_kib_{n}"] * 1.024 for n in ("1k", "10k"))  # KiB -> kB
        value = f"{at_1k:.1f} kB at 1k, {at_10k:.1f} kB at 10k"
        row("d", "RSS per idle subscriber", value, "<= 30 kB", max(at_1k, at_10k) <= 30)
        value = f"p50 {d['latency_p50_ms']:.2f} ms, p99 {d['latency_p99_ms']:.2f} ms"
        row("d", "webhook -> subscriber, 10k idle, 200/s", value, "p99 <= 5 ms", d["latency_p99_ms"] <= 5)
        bc = d["broadcast"]
        value = f"median {bc['last_subscriber_p50_ms']:.1f} ms, worst {bc['last_subscriber_max_ms']:.1f} ms"
        met = bc["last_subscriber_p50_ms"] <= 50
        row("d", "last of 1,000 subscribers has a broadcast", value, "<= 50 ms (median)", met)
        stall = d["longest_stall_ms_at_most"]
        row(
            "d",
            "longest event-loop stall, heartbeats running",
            f"<= {stall} ms ({d['heartbeats_sent']:,} heartbeats)",
            "<= 50 ms",
            stall is not None and stall <= 50,
        )
    e = results.get("e")
    if e:
        value = (
            f"{e['leaked_subscriptions']} subscriptions, {e['leaked_fds']} fds leaked; RSS "
            f"{e['rss_growth_kib']:+,} KiB ({e['rss_growth_second_half_kib']:+,} KiB over the 2nd half)"
        )
        # Flat: the second 5,000 cycles grow RSS by under 2 MiB (allocator noise), i.e. under 0.4 KiB a cycle.
        met = e["leaked_subscriptions"] == 0 and e["leaked_fds"] == 0 and e["rss_growth_second_half_kib"] <= 2048
        row("e", "10k SSE connect/disconnect cycles", value, "0 leaks, flat memory", met)
    f = results.get("f")
    if f:
        value = f"{f['seconds_to_all_resumed']:.2f} s, {f['events_lost']} lost, {f['events_duplicated']} duplicated"
        met = f["seconds_to_all_resumed"] <= 30 and f["events_lost"] == 0
        row("f", "reconnect storm, 10k with Last-Event-ID", value, "<= 30 s, 0 lost", met)
    g = results.get("g")
    if g:
        value = f"p50 {g['latency_p50_ms']:.2f} ms, p99 {g['latency_p99_ms']:.2f} ms"
        row("g", "cross-replica webhook -> subscriber (PostgreSQL)", value, "p99 <= 20 ms", g["latency_p99_ms"] <= 20)
    h = results.get("h")
    if h:
        value = f"p50 {h['latency_p50_ms']:.2f} ms, p99 {h['latency_p99_ms']:.2f} ms"
        what = f"provider webhook -> caller's endpoint, {h['endpoints']} endpoints, {h['webhook_rate']}/s"
        row("h", what, value, "p99 <= 20 ms", h["latency_p99_ms"] <= 20)
    h2 = results.get("h2")
    if h2 and h:
        value = (
            f"healthy p99 {h2['latency_p99_ms']:.2f} ms ({h2['p99_vs_h']:.2f} x h), "
            f"max {h2['latency_max_ms']:.0f} ms, {h2['late']} later than 1 s"
        )
        what = f"same, {h2['black_holed']} of the {h2['endpoints']} endpoints black-holed"
        met = h2["p99_vs_h"] <= 1.5 and h2["late"] == 0
        row("h2", what, value, "p99 <= 1.5 x h, none > 1 s", met)
    h3 = results.get("h3")
    if h3:
        value = f"{h3['per_second']:,.0f}/s, server RSS {h3['rss_growth_mib'] * 1.048576:+.1f} MB"  # MiB -> MB
        what = f"drain {h3['deliveries']:,} deliveries after a receiver outage"
        met = h3["per_second"] >= 2000 and h3["rss_growth_mib"] * 1.048576 <= 50
        row("h3", what, value, ">= 2,000/s, RSS <= +50 MB", met)
    i = results.get("i")
    if i:
        value = f"p50 {i['latency_p50_ms']:.2f} ms, p99 {i['latency_p99_ms']:.2f} ms"
        what = f"POST /v1/jobs 202 -> the provider has the create, {i['job_rate']}/s"
        row("i", what, value, "p99 <= 20 ms", i["latency_p99_ms"] <= 20)
    i2 = results.get("i2")
    if i2:
        value = f"p50 {i2['latency_p50_ms']:.1f} ms, p99 {i2['latency_p99_ms']:.1f} ms"
        value += f", max {i2['latency_max_ms']:.0f} ms"
        what = f"route failover: first candidate refuses -> the second has the create, {i2['job_rate']}/s"
        row("i2", what, value, "p99 <= 1 s", i2["latency_p99_ms"] <= 1000)
    j = results.get("j")
    if j:
        value = (
            f"{j['copy_mb_s']:,.0f} MB/s ({j['copy_vs_download']:.2f} x a plain download's {j['download_mb_s']:,.0f}), "
            f"RSS {j['copy_rss_growth_mb']:+.1f} MB"
        )
        what = f"copy a {j['bytes'] / 1e6:,.0f} MB output into the asset store"
        met = j["copy_vs_download"] >= 0.8 and j["copy_rss_growth_mb"] <= 32
        row("j", what, value, ">= 0.8 x download, RSS <= +32 MB", met)
    j2 = results.get("j2")
    if j2:
        value = f"{j2['reelay_mb_s']:,.0f} MB/s ({j2['reelay_vs_static']:.2f} x static {j2['static_mb_s']:,.0f} MB/s)"
        what = f"{j2['readers']} concurrent Range reads of a {j2['bytes'] / 1e6:,.0f} MB asset"
        row("j2", what, value, ">= 0.5 x a static file server", j2["reelay_vs_static"] >= 0.5)
    k = results.get("k")
    if k:
        rows.extend(_scale_rows(k))
    _polling_rows(results, row)
    return rows


_SCALE_QUERIES = {
    "first_page": "first page",
    "metadata": "metadata.<key>",
    "status_model": "status+model",
    "deep_cursor": "deep cursor",
}


def _scale_rows(k: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase k: per backend, the p99 of each list query at the large scale (and its growth from the small one),
    then the resume rate."""
    small, large = k["scales"]
    rows = []
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        at_small, at_large = k[f"{backend}_{small}"], k[f"{backend}_{large}"]
        parts, met = [], True
        for query, label in _SCALE_QUERIES.items():
            p99, before = at_large[query]["p99_ms"], at_small[query]["p99_ms"]
            growth = p99 / before if before else float("inf")
            parts.append(f"{label} {p99:.1f} ms ({growth:.1f} x)")
            met = met and p99 <= 20 and growth < 2
        what = f"{name}: GET /v1/jobs p99 at {large:,} jobs (growth from {small:,})"
        rows.append({"phase": "k", "what": what, "value": ", ".join(parts), "target": "<= 20 ms, < 2 x", "met": met})
        resume = at_large["resume"]
        what = f"{name}: SSE resume {resume['events']:,} events back"
        value = f"{resume['per_second']:,.0f} events/s"
        rows.append(
            {"phase": "k", "what": what, "value": value, "target": ">= 50,000/s", "met": resume["per_second"] >= 50_000}
        )
    return rows


def _polling_rows(results: dict[str, Any], row: Callable[[str, str, str, str, bool | None], None]) -> None:
    """l and l2: polling at scale, and the rate budgets checked at the provider's emulator."""
    l_free = results.get("l")
    if l_free:
        steady = "" if l_free["steady"] else " (polling never became steady)"
        value = (
            f"{l_free['polls_per_second']:,.0f} polls/s (each job every {l_free['poll_interval_seconds']:g} s); "
            f"Reelay {l_free['server_cpu_pct']:.0f}% of a core, RSS {l_free['rss_mib_max'] * 1.048576:.0f} MB{steady}"
        )
        row("l", f"{l_free['jobs']:,} {l_free['provider']} jobs in flight, polled", value, "", None)
        per_poll = l_free["cpu_per_poll_ms"]
        met = per_poll is not None and per_poll <= 0.5 and l_free["steady"]
        row("l", "Reelay's CPU per poll", f"{per_poll:.2f} ms", "<= 0.5 ms", met)
        value = f"p50 {l_free['list_p50_ms']:.1f} ms, p99 {l_free['list_p99_ms']:.1f} ms"
        row("l", f"GET /v1/jobs meanwhile, {l_free['list_rate']}/s", value, "p99 <= 20 ms", l_free["list_p99_ms"] <= 20)
    limited = results.get("l_limited")
    if limited:
        limit = limited["rate_limit"]
        value = (
            f"at most {limited['calls_max_in_a_second']} in a second ({limited['polls_per_second']:.1f}/s on "
            f"average, {limited['cpu_per_poll_ms']:.2f} ms of CPU per poll)"
        )
        met = limited["calls_max_in_a_second"] <= limit
        row("l", f"same, rate limit {limit:g}/s: calls at the emulator", value, f"<= {limit:g} in any second", met)
        cap = limited["poll_cap_seconds"]
        behind = limited["polls_behind_max_seconds"]
        target = f"< {2 * cap:g} s (2 x the {cap:g} s cap)" if cap else "< 2 x the poll cap"
        met = None if cap is None or behind is None else behind < 2 * cap
        row("l", "same: the oldest overdue poll", f"up to {behind} s", target, met)
    l2 = results.get("l2")
    if l2:
        limit = l2["rate_limit"]
        value = f"at most {l2['calls_max_in_a_second']} in a second ({l2['calls_per_second']:.1f}/s on average)"
        what = f"{l2['workers']} workers on PostgreSQL, one {limit:g}/s budget: calls at the emulator"
        row("l2", what, value, f"<= {limit:g} in any second", l2["calls_max_in_a_second"] <= limit)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| | Measure | Result | Target | Met |", "|---|---|---|---|---|"]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['phase']} | {r['what']} | {r['value']} | {r['target']} | {met} |")
    return "\n".join(lines)


def generator_table(results: dict[str, Any]) -> str:
    lines = ["| Phase | Load generator CPU | Server CPU | Host CPU stolen by the hypervisor |", "|---|---|---|---|"]
    for phase in ("a", "b", "b_normal", "c", "d", "f", "g", "h", "h2", "h3", "i", "i2", "j2", "l", "l_limited", "l2"):
        got = results.get(phase)
        if got and "generator_cpu_pct" in got:
            client = "wrk, 1 thread" if phase in ("a", "b", "b_normal", "c") else "asyncio client"
            server = f"{got['server_cpu_pct']:.0f}%" if "server_cpu_pct" in got else "n/a"
            steal = f"{got['host_steal_pct']:.0f}%" if "host_steal_pct" in got else "n/a"
            lines.append(f"| {phase} ({client}) | {got['generator_cpu_pct']:.0f}% | {server} | {steal} |")
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    return (
        f"{info['date']}, commit {info['commit']}: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['os']} (kernel {info['kernel']}); Python {info['python']}, SQLite {info['sqlite']}, "
        f"{info['postgresql']}, {info['wrk']}; {packages}."
    )


def replace_between(path: Path, start: str, end: str, content: str) -> None:
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{content}\n{end}{tail}")
