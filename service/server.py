"""Runs one or more ASGI apps under uvicorn in one uvloop event loop, with one signal handler for all."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar

import structlog
import uvicorn
import uvloop

T = TypeVar("T")
log = structlog.get_logger("reelay.server")


class StartupError(Exception):
    """A server stopped before it started (its app's start-up failed); the log says why."""


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


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before anything starts: a busy port is one clear error, not a failed start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None


class Server(uvicorn.Server):
    """A uvicorn server on a socket bound beforehand (`listen`)."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self.socket = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets or [self.socket])
        except SystemExit:
            if self.started:
                raise
            # uvicorn exits the whole process when its app's start-up fails; `serve_all` reports it instead.
        finally:
            self.socket.close()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are handled once for every server, in `serve_all`


def make_server(app: Any, sock: socket.socket, *, graceful_seconds: float = 10.0) -> Server:
    host, port = sock.getsockname()[:2]
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
    return Server(config, sock)


async def serve_all(
    servers: Sequence[Server],
    *,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; `on_stop` runs first (it ends open streams so shutdown is quick).

    If one server fails to start, every server stops and `StartupError` is raised.
    """
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("server.stopping", servers=len(servers))
        if on_stop is not None:
            on_stop()
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        while not all(s.started for s in servers):
            if failed := [s for s, t in zip(servers, tasks, strict=True) if t.done() and not s.started]:
                stop()
                await asyncio.gather(*tasks)
                raise StartupError(f"the server for {failed[0].url} stopped during start-up; see the log above")
            await asyncio.sleep(0.05)
        else:
            for server in servers:
                log.info("server.listening", url=server.url)
            if on_started is not None:
                result = on_started()
                if result is not None:
                    await result
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
