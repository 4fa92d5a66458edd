"""The emulators' result files: real bytes at signed, expiring URLs, as a provider's storage bucket serves them.

Every emulator links its outputs as `<its own base URL>/_media/<expires>/<signature>/<provider-shaped path>`; the
link stops working `url_ttl_s` after the task completed (a 403 with an XML error, as S3 or GCS answer an expired
signed URL). The bytes are the files of `sandbox/media/` (see its README.md); knobs make the video large, slow,
of another content type, or failing for a while.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Final

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Stream

from sandbox.knobs import Chaos

__all__ = ["MEDIA", "MediaLinks", "media_route", "padded_video", "result_path"]

MEDIA_DIR: Final = Path(__file__).parent / "media"
# By file extension: the sample served and its Content-Type.
MEDIA: Final[dict[str, tuple[bytes, str]]] = {
    ".mp4": ((MEDIA_DIR / "sample.mp4").read_bytes(), "video/mp4"),
    ".jpg": ((MEDIA_DIR / "sample.jpg").read_bytes(), "image/jpeg"),
    ".png": ((MEDIA_DIR / "last_frame.png").read_bytes(), "image/png"),
}
CHUNK: Final = 64 * 1024
_ZEROS: Final = bytes(CHUNK)


@dataclass(frozen=True)
class MediaLinks:
    """Signs the result URLs of one emulator: `base` is where it listens, `ttl_s` how long a link lives."""

    base: str
    secret: bytes
    ttl_s: float

    def url(self, path: str, completed_at: float) -> str:
        """The link to `path` (no leading slash) of a task that completed at unix time `completed_at`."""
        expires = f"{completed_at + self.ttl_s:.3f}"  # unix time, to the millisecond
        return f"{self.base.rstrip('/')}/_media/{expires}/{sign(self.secret, expires, path)}/{path}"


def sign(secret: bytes, expires: str, path: str) -> str:
    return hmac.new(secret, f"{expires}\n{path}".encode(), hashlib.sha256).hexdigest()[:32]


def new_secret() -> bytes:
    return secrets.token_bytes(16)


def padded_video(size: int | None) -> tuple[int, AsyncIterator[bytes] | bytes]:
    """The sample MP4, or (with `size`) the sample followed by an MP4 `free` box up to `size` bytes in all, made
    chunk by chunk: still a valid file, never held whole in memory."""
    sample = MEDIA[".mp4"][0]
    pad = (size or 0) - len(sample)
    if pad <= 0:
        return len(sample), sample
    # A `free` box: its size (64-bit "largesize" when it does not fit in 32 bits) then zeros; a few bytes of zeros
    # when there is no room for a box header.
    if pad >= 2**32:
        header = struct.pack(">I4sQ", 1, b"free", pad)
    elif pad >= 8:
        header = struct.pack(">I4s", pad, b"free")
    else:
        header = b""

    async def chunks() -> AsyncIterator[bytes]:
        yield sample + header
        left = pad - len(header)
        while left > 0:
            yield _ZEROS[: min(left, CHUNK)]
            left -= CHUNK

    return len(sample) + pad, chunks()


def _throttled(body: AsyncIterator[bytes] | bytes, bytes_per_s: float) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        if isinstance(body, bytes):
            parts: AsyncIterator[bytes] = _pieces(body)
        else:
            parts = body
        async for part in parts:
            for start in range(0, len(part), CHUNK):
                piece = part[start : start + CHUNK]
                if bytes_per_s > 0:
                    await asyncio.sleep(len(piece) / bytes_per_s)
                yield piece

    return chunks()


async def _gzipped(body: AsyncIterator[bytes] | bytes) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(wbits=31)  # 31: the gzip format
    async for part in _pieces(body) if isinstance(body, bytes) else body:
        if packed := compressor.compress(part):
            yield packed
    yield compressor.flush()


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _storage_error(status_code: int, code: str, message: str, **extra: str) -> Response[bytes]:
    """An error as S3 (and GCS's XML API) answers a signed URL: XML, `application/xml`."""
    fields = "".join(f"<{name}>{value}</{name}>" for name, value in {"Code": code, "Message": message, **extra}.items())
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{fields}</Error>'.encode()
    return Response(body, status_code=status_code, media_type="application/xml")


def media_route(secret: bytes, current: Callable[[], Chaos], downloads: dict[str, int]) -> HTTPRouteHandler:
    """`GET /_media/{expires}/{sig}/{path}`: the file, while its link (signed with `secret`) is valid; `current()`
    is the emulator's chaos now (a knobs change replaces it). Each download that starts is counted in `downloads`
    by path."""

    @get("/_media/{expires:str}/{sig:str}/{path:path}", name="sandbox_media", include_in_schema=False)
    async def media(expires: FromPath[str], sig: FromPath[str], path: FromPath[str]) -> Response[bytes] | Stream:
        path = path.lstrip("/")
        if not hmac.compare_digest(sig, sign(secret, expires, path)):
            return _storage_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        now = time.time()
        if now >= float(expires):
            return _storage_error(
                403,
                "AccessDenied",
                "Request has expired",
                Expires=formatdate(float(expires), usegmt=True),
                ServerTime=formatdate(now, usegmt=True),
            )
        chaos = current()
        knobs = chaos.knobs
        if chaos.take_media_5xx():
            return _storage_error(503, "SlowDown", "Please reduce your request rate.")
        extension = path[path.rfind(".") :]
        if extension not in MEDIA:
            return _storage_error(404, "NoSuchKey", "The specified key does not exist.")
        sample, content_type = MEDIA[extension]
        if extension == ".mp4":
            size, body = padded_video(knobs.output_bytes)
            content_type = knobs.output_content_type or content_type
        else:
            size, body = len(sample), sample
        downloads[path] = downloads.get(path, 0) + 1
        headers = {"Cache-Control": "private, max-age=0"}
        if not knobs.output_unsized:
            headers["Content-Length"] = str(size)
        if extension == ".mp4" and knobs.output_gzip:
            headers["Content-Encoding"] = "gzip"
            headers.pop("Content-Length", None)
            body = _gzipped(body)
        if isinstance(body, bytes) and not knobs.output_bytes_per_s and not knobs.output_unsized:
            return Response(body, media_type=content_type, headers=headers)
        return Stream(_throttled(body, knobs.output_bytes_per_s), media_type=content_type, headers=headers)

    return media


def result_path(url: str) -> str:
    """The provider-shaped path of a result URL (what follows its expiry and signature)."""
    return url.split("/_media/", 1)[1].split("/", 2)[2]
