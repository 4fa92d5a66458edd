"""Loopback ports for tests, with nothing else imported: the PostgreSQL helper and the benchmark use them too."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def bind(port: int = 0) -> socket.socket:
    """A socket bound to a loopback port (a free one by default), before the app that needs its URL exists."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports free now, for a process that binds them itself.

    They lie outside the kernel's ephemeral range where it leaves room, so no `bind()` to port 0 or outgoing
    connection takes one in the meantime."""
    low, high = _ephemeral_range()
    if low - 10_000 > count:
        span = (10_000, low - count)
    elif 65_535 - high > count:
        span = (high + 1, 65_536 - count)
    else:
        span = (1_024, 65_536 - count)
    rng = random.Random()
    for _ in range(100):
        first = rng.randrange(*span)
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                socks.append(bind(port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default
