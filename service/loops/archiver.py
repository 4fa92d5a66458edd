"""The archiver: copies each succeeded job's outputs from the provider's URLs into the asset store before they expire.

Its queue is the table asset_archives (storage.archives), filled by the job's succeeded write itself; a row is
leased by one worker, which copies the job's items one after the other, streaming each through the private-address
guard into `AssetStore.put` (never whole in memory), with its size and sha256 counted on the way. A transient
failure (5xx, 408, 429, connection error, timeout) is retried with backoff until REELAY_ASSET_COPY_DEADLINE_SECONDS
after the success; a refusal (403/404/410 or another 4xx, a size over REELAY_ASSET_MAX_BYTES, a type outside
REELAY_ASSET_CONTENT_TYPES, a private address) is final for its item. Once every item is final, one transaction
adds `output.assets` (and `output.archive_error`) to the job, logs `job.archived` and closes the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import httpx
import msgspec
import structlog

from service.assets import Asset, AssetStore, AssetUrls, asset_key
from service.egress import GuardedTransport, Resolver, TargetRefused, check_target, system_resolver
from service.loops.base import finish_within
from service.schedule import Backoff
from service.timestamps import to_iso
from storage import ArchiveRecord, JobNotFound, JobRecord, StorageError
from storage.base import Decision

if TYPE_CHECKING:
    from service.gateway import Gateway
    from service.runtime import Runtime

log = structlog.get_logger("reelay.assets")

CHUNK: Final = 256 * 1024
# What ends a copy for good: the provider refused it (expired, deleted, forbidden), or it can never be taken.
_GONE: Final = frozenset({401, 403, 404, 410})
_TRANSIENT: Final = frozenset({408, 425, 429})
_FINAL_KEYS: Final = ("key", "error")


class _Final(Exception):
    """A copy that must not be tried again: its `archive_error` code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Transient(Exception):
    """A copy worth trying again later (until the deadline)."""


class _Counted:
    """A response body in chunks, hashed as it goes, cut off (and the put abandoned) past the size cap."""

    def __init__(self, response: httpx.Response, max_bytes: int) -> None:
        self.response = response
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.over = False

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.response.aiter_bytes(CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                self.over = True
                raise _Final("too_large", f"the result is over the {self.max_bytes} byte cap")
            self.digest.update(chunk)
            yield chunk


class Archiver:
    """Claims due archives and copies each job's outputs, at most `asset_concurrency` jobs at a time."""

    name = "archive"
    idle_seconds = 1.0  # how long an idle archiver waits for a wake-up before it looks again (other replicas' work)
    backoff = Backoff(initial=2.0, factor=2.0, cap=600.0)

    def __init__(
        self, runtime: Runtime, gateway: Gateway | None = None, *, resolve: Resolver = system_resolver
    ) -> None:
        if runtime.assets is None or runtime.asset_urls is None:
            raise ValueError("the archiver needs an asset store and its URL signer")
        settings = runtime.settings
        self.assets: AssetStore = runtime.assets
        self.urls: AssetUrls = runtime.asset_urls
        self.store = runtime.store
        self.clock = runtime.clock
        self.rng = runtime.rng
        self.metrics = runtime.metrics
        self.lease_seconds = settings.lease_seconds
        self.concurrency = settings.asset_concurrency
        self.max_bytes = settings.asset_max_bytes
        self.content_types = frozenset(settings.asset_content_types)
        self.deadline = settings.asset_copy_deadline_seconds
        self.allow_private = settings.webhook_allow_private
        self._wake = runtime.signals.archives
        # Its own client: result URLs are anybody's hosts (guarded), and a copy may last far longer than an API call.
        self.client = httpx.AsyncClient(
            transport=GuardedTransport(allow_private=self.allow_private, resolve=resolve),
            timeout=httpx.Timeout(60.0, connect=10.0),  # per read: a large file may take long in all
            follow_redirects=True,  # signed CDN URLs often redirect; every hop goes through the guard
            max_redirects=5,
            headers={"Accept-Encoding": "identity"},  # the bytes as stored, so size and sha256 are the file's
        )
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            free = self.concurrency - len(self._inflight)
            claimed: list[ArchiveRecord] = []
            self._wake.clear()  # before the claim: a wake-up during it is not lost
            if free > 0:
                try:
                    claimed = await self.store.claim_archives(self.clock(), free, self.lease_seconds)
                except StorageError as exc:
                    log.error("archive.claim_failed", error=str(exc))
            for record in claimed:
                task = asyncio.create_task(self._guarded(record))
                self._inflight.add(task)
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_seconds)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _guarded(self, record: ArchiveRecord) -> None:
        with structlog.contextvars.bound_contextvars(job_id=record.job_id):
            try:
                async with self._leased(record.job_id):
                    await self.archive(record)
            except StorageError as exc:
                # The lease expires and the archive is claimed again; copies already made are kept or redone.
                log.error("archive.storage_failed", error=str(exc))
            except Exception:
                log.exception("archive.crashed")

    @contextlib.asynccontextmanager
    async def _leased(self, job_id: str) -> AsyncIterator[None]:
        """Renew the archive's lease while its copies run: a large file may take longer than one lease."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                with contextlib.suppress(StorageError):
                    await self.store.renew_archive(job_id, self.clock() + self.lease_seconds)

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def archive(self, record: ArchiveRecord) -> None:
        """Copy what is left of one job's items; then finish the job, or save what was done and retry later."""
        items = [dict(item) for item in record.items]
        give_up = record.succeeded_at + self.deadline
        for item in items:
            if any(key in item for key in _FINAL_KEYS):
                continue
            if self.clock() >= give_up:
                last = item.get("last_error", "no copy was tried")
                self._failed(item, "unreachable", f"not copied within the deadline; last error: {last}")
                continue
            await self._copy(record.job_id, item, give_up)
        if all(any(key in item for key in _FINAL_KEYS) for item in items):
            await self._finish(record.job_id, items)
            return
        retry_at = min(self.clock() + self.backoff.delay(record.attempts, self.rng), give_up)
        await self.store.save_archive(record.job_id, items, retry_at)
        if await self.store.get_job(record.job_id) is None:
            await self._job_gone(record.job_id)  # pruned meanwhile: its archive row went with it, so save kept nothing
            return
        log.info("archive.retrying", attempt=record.attempts + 1, retry_in_s=round(retry_at - self.clock(), 1))

    async def _copy(self, job_id: str, item: dict[str, Any], give_up: float) -> None:
        """Copy one item into the store; records its result (or its last transient error) on `item`."""
        variant, index, url = item["variant"], item["index"], item["url"]
        key = asset_key(job_id, variant, index)
        started = time.perf_counter()
        try:
            # A copy that trickles (each read within its timeout) would otherwise hold its slot past the deadline.
            async with asyncio.timeout(max(0.0, give_up - self.clock())):
                size, content_type, sha256 = await self._stream(url, key)
        except TimeoutError:
            self._failed(item, "unreachable", "not copied within the deadline: the copy was still under way")
            return
        except _Final as final:
            self._failed(item, final.code, final.message)
            return
        except _Transient as transient:
            item["last_error"] = str(transient)
            log.warning("archive.transient", variant=variant, index=index, error=str(transient))
            return
        item.pop("last_error", None)
        item.update(key=key, bytes=size, content_type=content_type, sha256=sha256)
        self.metrics.assets_archived.labels(result="copied").inc()
        self.metrics.asset_bytes.inc(size)
        elapsed = time.perf_counter() - started
        log.info(
            "archive.copied",
            variant=variant,
            index=index,
            bytes=size,
            content_type=content_type,
            ms=round(elapsed * 1000, 1),
            mb_per_s=round(size / 1e6 / elapsed, 1) if elapsed > 0 else None,
        )

    async def _stream(self, url: str, key: str) -> tuple[int, str, str]:
        """GET `url` into the store under `key`; returns (size, content type, sha256). Raises _Final or _Transient."""
        try:
            check_target(url, allow_private=self.allow_private)  # an IP literal never reaches the resolver
            async with self.client.stream("GET", url) as response:
                status = response.status_code
                if status in _GONE or (400 <= status < 500 and status not in _TRANSIENT):
                    raise _Final("expired", f"the provider answered {status} for the result URL")
                if status != 200:
                    raise _Transient(f"the provider answered {status}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type not in self.content_types:
                    raise _Final("content_type", f"the result is {content_type or 'of no content type'}, not allowed")
                # Decoding would grow each read up to a thousandfold before the size cap sees it (a gzip bomb).
                encoding = response.headers.get("content-encoding", "").strip().lower()
                if encoding not in ("", "identity"):
                    raise _Final("content_type", f"the result is sent with Content-Encoding {encoding}, not as is")
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise _Final("too_large", f"the result is {length} bytes, over the {self.max_bytes} byte cap")
                body = _Counted(response, self.max_bytes)
                try:
                    size = await self.assets.put(key, body.chunks(), content_type=content_type)
                except Exception:
                    if body.over:  # the backend may wrap what the chunks raised: the cap is read off the body
                        raise _Final("too_large", f"the result is over the {self.max_bytes} byte cap") from None
                    raise
                return size, content_type, body.digest.hexdigest()
        except TargetRefused as refused:
            code = "private_address" if refused.reason not in ("invalid_url", "unsupported_scheme", "no_host") else ""
            raise _Final(code or "unreachable", f"the result URL is refused: {refused.message}") from None
        except httpx.HTTPError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        except (_Final, _Transient):
            raise
        except Exception as exc:  # the asset store failed (a full disk, S3 down): try again later
            log.warning("archive.store_failed", error=f"{type(exc).__name__}: {exc}")
            raise _Transient(f"the asset store failed: {type(exc).__name__}") from None

    def _failed(self, item: dict[str, Any], code: str, message: str) -> None:
        item.pop("last_error", None)
        item["error"] = {"code": code, "message": message}
        self.metrics.assets_archived.labels(result=code).inc()
        log.warning("archive.failed", variant=item["variant"], index=item["index"], reason=code, message=message)

    async def _finish(self, job_id: str, items: list[dict[str, Any]]) -> None:
        now = self.clock()
        assets = [
            msgspec.to_builtins(
                Asset(
                    variant=item["variant"],
                    index=item["index"],
                    url=self.urls.url(job_id, item["variant"], item["index"], now),
                    bytes=item["bytes"],
                    content_type=item["content_type"],
                    sha256=item["sha256"],
                )
            )
            for item in items
            if "key" in item
        ]
        failed = next((item for item in items if "error" in item), None)
        error = None if failed is None else {**failed["error"], "variant": failed["variant"], "index": failed["index"]}

        def archived(job: JobRecord) -> Decision:
            # Once only: a job already showing its assets (an archive finished twice) is left as it is.
            if job.status != "succeeded" or job.output is None or "assets" in job.output:
                return None
            output = {**job.output, "assets": assets, **({"archive_error": error} if error else {})}
            return msgspec.structs.replace(job, output=output, updated_at=to_iso(now)), "job.archived"

        try:
            outcome = await self.store.finish_archive(job_id, archived, items)
        except JobNotFound:
            await self._job_gone(job_id)  # pruned meanwhile: its archive row went with it
            return
        if outcome.event is not None:
            log.info("job.archived", assets=len(assets), archive_error=None if error is None else error["code"])

    async def _job_gone(self, job_id: str) -> None:
        """A job pruned while its copies ran: the prune deleted its assets first, so what was copied since goes now."""
        log.info("archive.job_gone")
        await self.assets.delete_job(job_id)

    async def drain(self, grace_seconds: float) -> None:
        """Let copies in flight finish within `grace_seconds`; the rest are cancelled (their partial files never
        become visible) and claimed again after the restart."""
        await finish_within(self._inflight, grace_seconds, "archive")
        await self.client.aclose()
