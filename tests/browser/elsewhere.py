"""A page on another origin than Reelay's, as a customer's web app would serve it: it opens an `EventSource` on
Reelay with a stream token taken from its own URL (`?reelay=<origin>&path=<stream path>&token=<token>`); at
/readme, the README's own example does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Another origin</title></head><body>
<script>
const given = new URLSearchParams(location.search);
const query = given.get("token") ? `?token=${encodeURIComponent(given.get("token"))}` : "";
const source = new EventSource(`${given.get("reelay")}${given.get("path")}${query}`);
window.received = [];
window.source = source;
for (const type of ["job.created", "job.submitted", "job.processing", "job.succeeded", "job.failed"]) {
  source.addEventListener(type, (e) => {
    window.received.push({ type, id: e.lastEventId, job: JSON.parse(e.data).job.id });
    if (type === "job.succeeded" || type === "job.failed") source.close();
  });
}
</script></body></html>
"""


# The README's EventSource example (section "Browsers"), run as written on a page that defines what it leaves to its
# reader: `jobId`, `token`, `render` and `refreshTokenAndReopen`; served at /readme?reelay=<origin>&job=&token=.
_README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
_EXAMPLE = re.search(r"## Browsers\n.*?```js\n(.*?)```", _README, re.S)
assert _EXAMPLE is not None, "the README's Browsers section has no js example"
README_PAGE = (
    """<!doctype html>
<html><head><meta charset="utf-8"><title>The README's example</title></head><body>
<script>
const given = new URLSearchParams(location.search);
const jobId = given.get("job");
const token = encodeURIComponent(given.get("token"));
window.rendered = [];
window.reopened = 0;
function render(job) { window.rendered.push(job.status); }
function refreshTokenAndReopen() { window.reopened += 1; }
"""
    + _EXAMPLE.group(1).replace("https://reelay.example.com", "${given.get('reelay')}")
    + """window.source = source;
</script></body></html>
"""
).encode()


async def elsewhere_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The one page, whatever the path (an ASGI app: nothing of Reelay's serves it)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    page = README_PAGE if scope["path"] == "/readme" else PAGE
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(page)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": page})
