"""Runs one or more ASGI apps under uvicorn in one uvloop event loop, with one signal handler for all."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.api.errors import encode_error
from service.errors import HeadersTooLarge, StartupError

if TYPE_CHECKING:
    from uvicorn.server import ServerState

    from service.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("reelay.server")
http_log = structlog.get_logger("reelay.http")


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


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may cost before it is cut off (the REELAY_* settings of the same names)."""

    max_header_bytes: int = 65_536
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.header_timeout_seconds,
            body_timeout_seconds=settings.body_timeout_seconds,
            keepalive_timeout_seconds=settings.keepalive_timeout_seconds,
        )


class LimitedConfig(uvicorn.Config):
    """uvicorn's configuration, plus the limits `LimitedHttpProtocol` enforces."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=LimitedHttpProtocol, timeout_keep_alive=limits.keepalive_timeout_seconds, **kwargs)
        self.limits = limits


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a cap on each request's line and headers, a deadline to receive them, and
    a deadline for the body of a request answered before its body was read (a 401 or 413), which is discarded.

    llhttp buffers headers of any size, and uvicorn's only timer runs from the end of a response to the next byte
    received: without these, a client holds memory and a connection for as long as it likes. Reading a body has its
    deadline in the app (`RequestContextMiddleware`), which answers 408.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = config.limits if isinstance(config, LimitedConfig) else ConnectionLimits()
        self.in_head = True  # the next bytes belong to a request line and headers
        self.head_bytes = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self.limits.header_timeout_seconds, "http.header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._set_deadline(self.limits.header_timeout_seconds, "http.header_timeout")
        super().data_received(data)
        # Counted as received, so a head that never ends is refused after about `max_header_bytes` of it.
        if self.in_head and self.head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._clear_deadline()
        if self.refused:
            return
        # Counted as parsed too: a whole head can arrive in one read together with its body.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_head, self.head_bytes = True, 0
        if self.refused:
            return
        # A discarded body has ended: the next request's head is awaited as after any response.
        if self.cycle is not None and self.cycle.response_complete:
            self._set_deadline(self.limits.header_timeout_seconds, "http.header_timeout")
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.more_body and not self.transport.is_closing():
            # Answered before its body arrived: the rest is read and dropped, so the client sees the answer
            # (closing at once could reset the connection under it), but only for so long.
            self._set_deadline(self.limits.body_timeout_seconds, "http.body_timeout")

    def _set_deadline(self, seconds: float, event: str) -> None:
        self._clear_deadline()
        self.deadline = self.loop.call_later(seconds, self._deadline_passed, event)

    def _clear_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self, event: str) -> None:
        self.deadline = None
        http_log.info(event, client=_host(self.client), discarding=not self.in_head)
        self.transport.close()

    def _refuse_head(self) -> None:
        """431 in the error shape, then close (no answer if an earlier request's response is still being sent)."""
        self.refused = True
        self._clear_deadline()
        limit = self.limits.max_header_bytes
        http_log.info("http.headers_too_large", client=_host(self.client), limit=limit)
        if self.cycle is None or self.cycle.response_complete:
            body = encode_error(
                HeadersTooLarge(f"the request line and headers exceed {limit} bytes", details={"limit": limit})
            )
            content = [STATUS_LINE[431]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.append(
                b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            content.append(body)
            self.transport.write(b"".join(content))
        self.transport.close()


def _host(client: tuple[str, int] | None) -> str | None:
    return client[0] if client else None


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


def make_server(
    app: Any, sock: socket.socket, *, graceful_seconds: float = 10.0, limits: ConnectionLimits | None = None
) -> Server:
    host, port = sock.getsockname()[:2]
    config = LimitedConfig(
        app,
        limits=limits or ConnectionLimits(),
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
