"""`python -m bench.upstream PORT`: the Seedancee2 emulator for the submission phase, on the same server code."""

from __future__ import annotations

import sys

from sandbox import SANDBOXES, SandboxKnobs
from service.server import listen, make_server, run, serve_all

# Tasks stay running for the whole benchmark: the emulator answers creates and sends no callbacks.
KNOBS = SandboxKnobs(processing_after_s=3600, complete_after_s=7200)

if __name__ == "__main__":
    app = SANDBOXES["seedancee2"].build(KNOBS)
    run(serve_all([make_server(app, listen("127.0.0.1", int(sys.argv[1])))]))
