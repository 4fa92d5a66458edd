"""A page on another origin than Reelay's, as a customer's web app would serve it: it opens an `EventSource` on
Reelay with a stream token taken from its own URL (`?reelay=<origin>&path=<stream path>&token=<token>`)."""

from __future__ import annotations

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


async def elsewhere_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The one page, whatever the path (an ASGI app: nothing of Reelay's serves it)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(PAGE)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": PAGE})
