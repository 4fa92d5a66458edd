"""`python -m bench.upstream PORT [PROVIDER]`: a provider's emulator (Seedancee2 by default) for phases c, i, i2, l
and l2.

It runs on the same server code as Reelay, behind `CreateClock`, which notes when each create reached the
emulator's process (CLOCK_MONOTONIC, the clock the benchmark reads too); `GET /_bench/creates` lists them and
`GET /_bench/created` counts the accepted ones.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import msgspec

from sandbox import SANDBOXES, SandboxKnobs
from service.server import listen, make_server, run, serve_all

# Tasks stay running for the whole benchmark: the emulator answers creates and sends no callbacks.
KNOBS = SandboxKnobs(processing_after_s=3600, complete_after_s=7200)
CREATES_PATH = "/_bench/creates"
CREATED_PATH = "/_bench/created"  # how many creates were answered 2xx: cheap to ask every second, unlike the list


class Create(msgspec.Struct):
    """One POST to the provider's API: when it arrived, the Reelay job it is for, and the status answered."""

    job_id: str | None
    at: float
    status: int


def job_of(headers: dict[bytes, bytes], body: bytes) -> str | None:
    """The Reelay job a create is for: MindVideo's Idempotency-Key, or the `metadata` Seedancee2 echoes."""
    key = headers.get(b"idempotency-key")
    if key is not None:
        return key.decode()
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    metadata = decoded.get("metadata") if isinstance(decoded, dict) else None
    job_id = metadata.get("reelay_job_id") if isinstance(metadata, dict) else None
    return job_id if isinstance(job_id, str) else None


class CreateClock:
    """ASGI wrapper: records every POST outside `/_sandbox/` as a `Create`, stamped when its request arrived."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.creates: list[Create] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in (CREATES_PATH, CREATED_PATH):
            accepted = {"accepted": sum(1 for c in self.creates if 200 <= c.status < 300)}
            body = msgspec.json.encode(self.creates if scope["path"] == CREATES_PATH else accepted)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] != "POST" or scope["path"].startswith("/_sandbox/"):
            await self.app(scope, receive, send)
            return
        at = time.monotonic()
        # Read the whole body first: an emulator that refuses a create (a knob, a bad key) never reads it.
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False
        status = 0

        async def receiving() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receiving, sending)
        self.creates.append(Create(job_of(dict(scope["headers"]), body), at, status))


if __name__ == "__main__":
    provider = sys.argv[2] if len(sys.argv) > 2 else "seedancee2"
    app = CreateClock(SANDBOXES[provider].build(KNOBS))
    run(serve_all([make_server(app, listen("127.0.0.1", int(sys.argv[1])))]))
