"""wrk as the load generator for the request-rate phases, with its own CPU use measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from bench.common import BIN, ROOT, HostSteal, cpu_seconds

SCRIPT = ROOT / "bench" / "wrk" / "cycle.lua"


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (bench/run does it for you)")
    return found


def write_requests(path: Path, requests: Iterable[tuple[dict[str, str], bytes]]) -> int:
    """One line per request for cycle.lua: header name, value, ..., body, tab-separated."""
    count = 0
    with path.open("wb") as out:
        for headers, body in requests:
            if b"\t" in body or b"\n" in body:
                raise ValueError("cycle.lua takes one request per line: a body may hold no tab or newline")
            fields = [item for pair in headers.items() for item in pair]
            out.write("\t".join(fields).encode() + (b"\t" if fields else b"") + body + b"\n")
            count += 1
    return count


def run_wrk(
    url: str,
    requests_file: Path,
    *,
    method: str = "POST",
    duration: float,
    connections: int,
    threads: int = 1,
    server_pid: int | None = None,
    profile: Path | None = None,
) -> dict[str, float]:
    """Run wrk against `url` (path included) and return its counts, latency and the CPU of both sides.

    With `profile`, py-spy samples the server meanwhile and writes collapsed stacks there.
    """
    base, _, path = url.partition("//")[2].partition("/")
    command = [
        wrk_path(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        f"http://{base}",
        "--",
        str(requests_file),
        method,
        "/" + path,
        str(threads),
    ]
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    steal = HostSteal()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    spy = py_spy(server_pid, profile, duration) if profile and server_pid else None
    _, status, usage = os.wait4(process.pid, 0)
    if spy is not None:
        spy.wait(30)
    wall = time.perf_counter() - started
    out, err = (stream.read().decode() if stream else "" for stream in (process.stdout, process.stderr))
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err or out}")
    line = next((x for x in out.splitlines() if x.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}\n{err}")
    raw = json.loads(line)
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status_errors"]
    result = {
        "requests": raw["requests"],
        "ok": ok,
        "non_2xx": raw["status_errors"],
        "socket_errors": raw["socket_errors"],
        "seconds": round(seconds, 2),
        "per_second": round(ok / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "connections": connections,
        "generator_cpu_pct": round(100 * (usage.ru_utime + usage.ru_stime) / wall, 1),
        "host_steal_pct": steal.pct(),
    }
    if server_pid:
        result["server_cpu_pct"] = round(100 * (cpu_seconds(server_pid) - server_cpu) / wall, 1)
    return result


def py_spy(pid: int, out: Path, duration: float) -> subprocess.Popen[bytes]:
    command = [str(BIN / "py-spy"), "record", "-p", str(pid), "-d", str(max(1, int(duration) - 1))]
    command += ["-r", "200", "--format", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
