"""Processes, measurements and numbers shared by every benchmark phase."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class HostSteal:
    """The share of the host's CPU time the hypervisor gave to other guests over a window (/proc/stat `steal`).

    A shared VM that is short of CPU runs everything slower at once; this says when a run was such a run.
    """

    def __init__(self) -> None:
        self._start = self._ticks()

    @staticmethod
    def _ticks() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return fields[7] if len(fields) == 8 else 0, sum(fields)

    def pct(self) -> float:
        steal, total = self._ticks()
        spent = total - self._start[1]
        return round(100 * (steal - self._start[0]) / spent, 1) if spent else 0.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class CpuMeter:
    """CPU used by this process and by a server process over a window, as a share of one core."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._server = cpu_seconds(server_pid) if server_pid else 0.0
        self._steal = HostSteal()

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        result = {
            "generator_cpu_pct": round(100 * (time.process_time() - self._own) / wall, 1),
            "host_steal_pct": self._steal.pct(),
        }
        if self.server_pid:
            result["server_cpu_pct"] = round(100 * (cpu_seconds(self.server_pid) - self._server) / wall, 1)
        return result


@dataclass
class Process:
    """A server started for one phase; its output goes to a log file shown if it dies."""

    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def spawn(command: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[Process]:
    with log.open("ab") as out:
        popen = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    process = Process(popen, log, port)
    try:
        wait_listening(process)
        yield process
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)


def wait_listening(process: Process, path: str = "/healthz", timeout: float = 30.0) -> None:
    """Until GET `path` answers (any status): the server has started and bound its port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"server exited during start-up:\n{process.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", process.port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n".encode())
                if sock.recv(12).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not start within {timeout:.0f} s:\n{process.tail()}")


async def http(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """One request on a fresh connection; returns the body (for /metrics and small calls)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "host: bench", "connection: close", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = await reader.read()
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        return _dechunk(rest)
    return rest


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def counter(text: bytes, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include every given label."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {" and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def buckets(text: bytes, name: str) -> dict[float, float]:
    """Cumulative counts of a Prometheus histogram, by upper bound."""
    result: dict[float, float] = {}
    for line in text.decode().splitlines():
        if line.startswith(name + "_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            result[float(bound)] = float(line.rsplit(" ", 1)[1])
    return result


async def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `done` every 10 ms until it holds; after `timeout` seconds the run stops, saying `what` never came.

    A benchmark that went on would publish numbers over the events that arrived and hide the ones that did not.
    """
    deadline = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() >= deadline:
            raise RuntimeError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.01)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
