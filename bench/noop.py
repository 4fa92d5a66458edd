"""`python -m bench.noop PORT`: the ceiling, a bare Litestar app whose POST does nothing, on Reelay's server code."""

from __future__ import annotations

import sys

from litestar import Litestar, get, post

from service.server import listen, make_server, run, serve_all


@post(["/webhooks/seedancee2", "/v1/jobs"], status_code=204)
async def noop() -> None:
    return None


@get("/healthz")
async def healthz() -> None:
    return None


app = Litestar([noop, healthz], logging_config=None, debug=False)

if __name__ == "__main__":
    run(serve_all([make_server(app, listen("127.0.0.1", int(sys.argv[1])))]))
