"""httpx's transport interface over an aiohttp session, for the calls to providers: the adapters keep httpx's API,
and each request costs about a third of the CPU of httpx's own transport (httpcore, anyio, h11; bench/http_clients.py).

Failures raise the httpx exceptions that httpx's own transport would, so `HttpProvider.call` tells a request that
never left (connect errors and timeouts) from one that may have reached the provider (everything else).
"""

from __future__ import annotations

import ssl
import urllib.request
from typing import Final

import aiohttp
import httpx
import yarl

__all__ = ("AiohttpTransport",)

_HTTP11: Final = b"HTTP/1.1"


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends each httpx request through one aiohttp session (HTTP/1.1, keep-alive) and reads the whole answer.

    httpx's timeouts apply: `connect` to opening a connection, `pool` to waiting for one, `read` to each read.
    Redirects and decompression stay httpx's (aiohttp follows none and hands the body over as sent).
    """

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._ssl = httpx.create_ssl_context(verify=verify)
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        # HTTP(S)_PROXY, ALL_PROXY and NO_PROXY apply as they do to httpx's own client, read once: aiohttp's
        # trust_env reads the environment again on every request (about 0.4 ms of CPU each).
        self._proxies = urllib.request.getproxies()
        self._proxy_of: dict[tuple[str, str, int | None], str | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use: aiohttp binds it to the running event loop."""
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry or 5.0,  # httpx's default
            ssl=self._ssl,
        )
        # httpx keeps the cookies and decodes the body, as with its own transport.
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        return self._session

    def _proxy(self, url: httpx.URL) -> str | None:
        """The proxy the environment names for `url`'s origin, if any (worked out once per origin)."""
        origin = (url.scheme, url.host, url.port)
        if origin not in self._proxy_of:
            proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
            self._proxy_of[origin] = None if not proxy or urllib.request.proxy_bypass(url.host) else proxy
        return self._proxy_of[origin]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        session = self._session or self._open()
        try:
            async with session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=await request.aread() or None,
                allow_redirects=False,
                proxy=self._proxy(request.url),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            ) as answer:
                body = await answer.read()
                status, headers, reason = answer.status, answer.raw_headers, answer.reason
        except aiohttp.ConnectionTimeoutError as exc:  # before ServerTimeoutError, its parent
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:  # the connection failed after the request may have left
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        extensions = {"http_version": _HTTP11}
        if reason:
            extensions["reason_phrase"] = reason.encode()
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(body), request=request, extensions=extensions
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
