"""Reelay's asset store: where each output of a succeeded job is copied before the provider's URL expires.

`AssetStore` is the one interface the archiver (writes) and the content route (reads) use; `open_assets` builds it
from REELAY_ASSETS (`file://<dir>`, `s3://bucket/prefix`, or `off`). `AssetUrls` signs the expiring links that let
a browser fetch an asset with no API key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Final, Literal, Protocol, get_args
from urllib.parse import urlencode

import msgspec

Variant = Literal["video", "thumbnail", "last_frame"]
VARIANTS: Final[tuple[Variant, ...]] = get_args(Variant)


def asset_key(job_id: str, variant: str, index: int) -> str:
    """Where a job's output is kept in the store: every asset of a job under one prefix, `<job_id>/`."""
    return f"{job_id}/{variant}-{index}"


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    """One archived output, as the job's `output.assets` shows it (`url` is signed when the job is shown)."""

    variant: str
    index: int
    url: str
    bytes: int
    content_type: str
    sha256: str


class AssetStore(Protocol):
    """Objects by key. A `put` becomes visible only once all of it is written: a reader (or a restart after a
    crash mid-copy) sees the whole object or none."""

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        """Write the object from `chunks` (never held whole in memory), replacing any; returns its size."""
        ...

    async def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none."""
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes from `start` up to `end` (exclusive; None: to its end), in chunks."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove objects; keys that are absent are not an error."""
        ...

    async def delete_job(self, job_id: str) -> None:
        """Remove every object of a job (its `<job_id>/` prefix)."""
        ...

    async def close(self) -> None: ...


class AssetUrls:
    """Signs and checks the expiring query (`expires`, `sig`) of an asset's URL: an HMAC-SHA256 of the job, the
    variant, the index and the expiry, under a secret every replica shares."""

    def __init__(self, secret: bytes, public_url: str, ttl_seconds: float) -> None:
        self._secret = secret
        self._public_url = public_url.rstrip("/")
        self.ttl_seconds = ttl_seconds

    def url(self, job_id: str, variant: str, index: int, now: float) -> str:
        expires = int(now + self.ttl_seconds)
        query = urlencode(
            {"variant": variant, "index": index, "expires": expires, "sig": self._sign(job_id, variant, index, expires)}
        )
        return f"{self._public_url}/v1/jobs/{job_id}/content?{query}"

    def valid(self, job_id: str, variant: str, index: int, expires: int, sig: str, now: float) -> bool:
        """Whether `sig` is this job's asset signature for `expires`, and `expires` is still ahead."""
        good = hmac.compare_digest(sig.encode(), self._sign(job_id, variant, index, expires).encode())
        return good and now < expires

    def _sign(self, job_id: str, variant: str, index: int, expires: int) -> str:
        message = f"{job_id}\n{variant}\n{index}\n{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
