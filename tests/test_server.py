"""`serve_all`, the loop every `reelay` server command runs: one failed start-up stops every server."""

from __future__ import annotations

import httpx
import pytest
from litestar import Litestar, get

from service.errors import StartupError
from service.server import listen, make_server, serve_all


@get("/")
async def hello() -> str:
    return "hello"


def _refuse() -> None:
    raise RuntimeError("the database is gone")


async def test_a_failed_start_up_stops_every_server_and_raises() -> None:
    healthy = make_server(Litestar([hello]), listen("127.0.0.1", 0), graceful_seconds=1)
    url = healthy.url
    broken = make_server(Litestar([hello], on_startup=[_refuse]), listen("127.0.0.1", 0), graceful_seconds=1)
    with pytest.raises(StartupError, match=f"the server for {broken.url} stopped during start-up"):
        await serve_all([healthy, broken])
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
