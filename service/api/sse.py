"""Server-sent event streams: replay from the log after a cursor, then live events, with no gap or repeat."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from litestar import Response
from litestar.response.base import ASGIResponse

from service.errors import RateLimited
from service.hub import CLOSE, HEARTBEAT, OVERFLOW, REVOKED, SHUTDOWN, EventHub, Subscription, event_matches, sse_frame
from service.vocabulary import TERMINAL_EVENTS

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.types import Receive, Scope, Send

    from service.api.limits import KeyLimits
    from service.events import EventLog

_REPLAY_PAGE = 500
_REPLAY_BYTES = 128 * 1024  # of job snapshots per replay page
_PING = b": ping\n\n"


class StreamSession:
    """One subscriber connection: `open` subscribes before the headers go out, `run` sends the stream."""

    def __init__(
        self,
        *,
        events: EventLog,
        hub: EventHub,
        api_key_id: str,
        job_id: str | None,
        after_id: int | None,
        heartbeat: float,
        retry_ms: int,
        rng: random.Random,
        job_finished: bool = False,
        whole_job: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.events = events
        self.hub = hub
        self.api_key_id = api_key_id
        self.job_id = job_id
        self.after_id = after_id
        self.heartbeat = heartbeat
        self.retry_ms = retry_ms
        self.rng = rng
        self.job_finished = job_finished  # the job was terminal before the request: its log is complete
        # A job's own stream replays it from the start and ends at its terminal event; /v1/events narrowed to a
        # job by a stream token does neither.
        self.whole_job = job_id is not None if whole_job is None else whole_job
        self.metadata = metadata  # a stream token's filter: only events of jobs with these metadata pairs
        self.sub: Subscription
        self.cursor = 0

    async def open(self) -> None:
        """Subscribe, then fix the replay cursor; both happen before the response headers are sent.

        Whatever commits after the subscription is queued (ids dedupe the overlap with the replay), so a
        client that has the headers gets every event committed from then on.
        """
        self.sub = self.hub.subscribe(self.api_key_id, self.job_id, self.metadata)
        if self.after_id is not None:
            self.cursor = self.after_id
            return
        try:
            self.cursor = 0 if self.whole_job else await self.events.newest_id()
        except BaseException:
            self.sub.close()
            raise

    async def run(self, send: Send, receive: Receive) -> None:
        """Send the stream; call after `open`. The response closes the subscription however this ends."""
        sub = self.sub
        watcher = asyncio.ensure_future(_watch_disconnect(receive, sub))
        ends_with_job = self.whole_job
        last = self.cursor
        try:
            await _body(send, b"retry: %d\n\n" % self.retry_ms)
            # One bounded page at a time, sent as one chunk; the next page is read only once `send` took this
            # one, which waits while the client's socket is full: a reader that stalls holds one page.
            while not sub.closed:
                page = await self.events.page_after(
                    last, api_key_id=self.api_key_id, job_id=self.job_id, limit=_REPLAY_PAGE, max_bytes=_REPLAY_BYTES
                )
                if not page:
                    break
                frames = []
                for event in page:
                    last = event.id
                    if not event_matches(event, self.metadata):
                        continue
                    frames.append(sse_frame(event))
                    if ends_with_job and event.type in TERMINAL_EVENTS:
                        await _body(send, b"".join(frames))
                        return
                if frames:
                    await _body(send, b"".join(frames))
            if ends_with_job and self.job_finished:
                return  # resumed at or after the terminal event: nothing more will come
            sub.start_heartbeat(self.heartbeat, self.rng)
            while True:
                item = await sub.next()
                if item is HEARTBEAT:
                    await _body(send, _PING)
                elif item is OVERFLOW:
                    await _body(send, b": too slow; reconnect with Last-Event-ID to resume\n\n")
                    return
                elif item is SHUTDOWN:
                    # A last hint: come back soon, to this or another replica, from the last id received.
                    await _body(send, b"retry: %d\n: server shutting down; reconnect with Last-Event-ID\n\n" % 1000)
                    return
                elif item is REVOKED:
                    await _body(send, b": api key revoked\n\n")
                    return
                elif item is CLOSE:
                    return
                elif isinstance(item, tuple):
                    event_id, event_type, frame = item
                    if event_id <= last:
                        continue
                    await _body(send, frame)
                    last = event_id
                    if ends_with_job and event_type in TERMINAL_EVENTS:
                        return
        except OSError:
            return  # the client went away mid-write
        finally:
            watcher.cancel()


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _watch_disconnect(receive: Receive, sub: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            sub.close()
            return


class _EventStreamASGI(ASGIResponse):
    _should_set_content_length = False
    __slots__ = ("limits", "session")

    def __init__(self, session: StreamSession, headers: dict[str, str], limits: KeyLimits) -> None:
        super().__init__(headers=headers, media_type="text/event-stream", status_code=200)
        self.session = session
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Before the headers: a refusal is still an ordinary 429 answer.
        slot = await self.limits.open_stream(self.session.api_key_id)
        if slot is None:
            limit = self.limits.max_streams
            raise RateLimited(
                f"this API key already has {limit} open event streams; close one or retry later",
                code="too_many_streams",
                details={"max_streams": limit},
                retry_after=5,
            )
        try:  # the slot is given back however the stream ends
            await self.session.open()
            try:  # the subscription is closed however the connection ends
                await self.start_response(send=send)
                await self.session.run(send, receive)
            finally:
                self.session.sub.close()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.limits.close_stream(slot)


class EventStream(Response[bytes]):
    """A `text/event-stream` response driven by a StreamSession."""

    def __init__(self, session: StreamSession) -> None:
        super().__init__(b"", media_type="text/event-stream")
        self.session = session

    def to_asgi_response(self, app: Litestar | None, request: Request[Any, Any, Any], **kwargs: Any) -> ASGIResponse:
        headers = {
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx: pass events through as they come
            **(kwargs.get("headers") or {}),
        }
        return _EventStreamASGI(self.session, headers, request.app.state.ctx.limits)
