"""Runs one or more ASGI apps under uvicorn in one uvloop event loop, with one signal handler for all."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar

import uvicorn
import uvloop

T = TypeVar("T")


# CPython collects its youngest generation every 700 net allocations. A server holding 10,000 streams then promotes
# so many short-lived objects that full collections, each walking every connection's objects, come every second or
# two and last up to 0.6 s (bench/RESULTS.md). A larger young generation lets those objects die young.
GC_THRESHOLDS = (50_000, 20, 10)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop, the loop `uvicorn.run` would pick (asyncio.run alone gives the slower default).

    Start-up objects (modules, the app) are frozen out of every later collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are handled once for every server, in `serve_all`


def make_server(app: Any, host: str, port: int, *, graceful_seconds: float = 10.0) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(graceful_seconds),
        server_header=False,
    )
    return _Server(config)


async def serve_all(
    servers: Sequence[uvicorn.Server],
    *,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; `on_stop` runs first (it ends open streams so shutdown is quick)."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if on_stop is not None:
            on_stop()
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        if on_started is not None:
            while not all(s.started for s in servers):
                if any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.05)
            else:
                result = on_started()
                if result is not None:
                    await result
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
