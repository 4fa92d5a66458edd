"""The guard on Reelay's connections to URLs it does not choose itself (callers' webhook receivers, and later
providers' result URLs), so they cannot reach the private network around it.

`check_target` refuses a URL when it is registered; at connect time, `GuardedTransport` (httpx) and
`GuardedResolver` (aiohttp, which sends caller webhooks) resolve every host name themselves, check each address,
and connect only to an address they checked, so DNS cannot rebind between check and use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, Literal, TypeAlias
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import httpcore
import httpx

__all__ = (
    "GuardedResolver",
    "GuardedTransport",
    "IPAddress",
    "Reason",
    "Resolver",
    "TargetRefused",
    "check_target",
    "screened",
    "system_resolver",
)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

AddressKind = Literal["unspecified", "loopback", "link_local", "multicast", "reserved", "private"]
Reason = Literal["invalid_url", "unsupported_scheme", "no_host", AddressKind]

# The kinds REELAY_WEBHOOK_ALLOW_PRIVATE lets through; link-local (cloud metadata) and the rest stay refused.
_PRIVATE_KINDS: Final[frozenset[AddressKind]] = frozenset({"private", "loopback"})
# Networks inside an organisation: RFC 1918, shared CGNAT space (RFC 6598), unique-local and site-local IPv6.
_PRIVATE_NETWORKS: Final = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")
)
# "This host on this network" (RFC 1122): Linux connects 0.0.0.0 to the machine itself.
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_HTTPX_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own default
# Hosts that browsers and curl read as IPv4 although they are not dotted quads (2852039166, 0xa9fea9fe, 169.254.43518).
_NUMERIC_HOST: Final = re.compile(r"[0-9a-fx.]+")


class TargetRefused(httpx.ConnectError):
    """A URL or a resolved address the guard will not connect to; `reason` says why, `details` is the 400's details.

    An `httpx.ConnectError`, so a client sending through `GuardedTransport` handles a refusal like any failed
    connection and finds the reason on the exception.
    """

    def __init__(self, reason: Reason, message: str, *, host: str | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.host = host
        self.address = address

    @property
    def details(self) -> dict[str, str]:
        found = {"host": self.host, "address": self.address}
        return {"reason": self.reason, **{key: value for key, value in found.items() if value is not None}}


def check_target(url: str, *, allow_private: bool = False) -> None:
    """Raise TargetRefused unless `url` is an http(s) URL whose host is a name or a public address.

    A name is checked again, once resolved, by `GuardedTransport`; `allow_private` lets private and loopback hosts
    (and `localhost`) through.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise TargetRefused("invalid_url", "not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        problem = f"the scheme {parts.scheme + ':'!r} is not accepted" if parts.scheme else "not an absolute URL"
        raise TargetRefused("unsupported_scheme", problem)
    if not host:
        raise TargetRefused("no_host", "the URL has no host")
    name = host.removesuffix(".")  # a fully qualified name: `localhost.` is `localhost`
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always the machine itself
        kind: AddressKind | None = "loopback"
        address = None
    else:
        literal = _ip_literal(name)
        kind = None if literal is None else _address_kind(literal)
        address = None if literal is None else str(literal)
    if kind is not None and not (allow_private and kind in _PRIVATE_KINDS):
        raise TargetRefused(
            kind, f"the host {host} is a non-public address ({_label(kind)})", host=host, address=address
        )


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses the system resolver gives for `host`, in its order of preference."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(sockaddr[0])) for *_, sockaddr in found))


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, except that each connection goes only to an address the guard allows.

    Every connection is checked, so a redirect that a caller chooses to follow is checked at each hop. It never
    goes through a proxy (a proxy would resolve names itself, out of the guard's sight). asyncio only.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolve: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = _HTTPX_LIMITS,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # httpx passes no network backend to its pool (encode/httpx#3749): build the same pool with ours.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps its pool in _pool; the guard cannot apply")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(
                allow_private=allow_private, resolve=resolve, network=network_backend or httpcore.AnyIOBackend()
            ),
        )


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, checks every address, and opens the connection to a checked one.

    httpcore still starts TLS with the original host name, so SNI and certificate verification are unchanged, and
    the Host header is the request's own.
    """

    def __init__(self, *, allow_private: bool, resolve: Resolver, network: httpcore.AsyncNetworkBackend) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._network = network

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        # The connect timeout covers resolution and connection together, as httpx's own backend does.
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        allowed = screened(host, addresses, allow_private=self._allow_private)
        if not allowed:
            raise httpcore.ConnectError(f"{host} resolves to no address")

        async def connect(address: IPAddress) -> httpcore.AsyncNetworkStream:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            return await self._network.connect_tcp(
                str(address), port, timeout=remaining, local_address=local_address, socket_options=socket_options
            )

        for address in allowed[:-1]:
            with contextlib.suppress(httpcore.ConnectError):  # the next address then, as socket.create_connection
                return await connect(address)
        return await connect(allowed[-1])

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """The guard for aiohttp: resolves a name itself and hands aiohttp only the addresses the guard accepts, and
    aiohttp connects only to what its resolver gives, so DNS cannot rebind between check and use.

    aiohttp never asks a resolver about an IP literal: call `check_target` on each URL before sending to it.
    """

    def __init__(self, *, allow_private: bool = False, resolve: Resolver = system_resolver) -> None:
        self._allow_private = allow_private
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        addresses = screened(host, await self._resolve(host, port), allow_private=self._allow_private)
        if not addresses:
            raise OSError(f"{host} resolves to no address")  # aiohttp reports it as a DNS error
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


def screened(host: str, addresses: Iterable[IPAddress], *, allow_private: bool) -> list[IPAddress]:
    """The addresses of `host` the guard lets a connection go to, in the resolver's order; raise the first
    refusal when there were addresses but the guard refused every one."""
    allowed: list[IPAddress] = []
    refused: list[TargetRefused] = []
    for address in addresses:
        kind = _address_kind(address)
        if kind is None or (allow_private and kind in _PRIVATE_KINDS):
            allowed.append(address)
            continue
        resolved = "is" if str(address) == host else f"resolves to {address}, which is"
        refused.append(
            TargetRefused(
                kind,
                f"the host {host} {resolved} a non-public address ({_label(kind)})",
                host=host,
                address=str(address),
            )
        )
    if refused and not allowed:
        raise refused[0]
    return allowed


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host names literally (IPv4-mapped IPv6 as its IPv4), or None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _NUMERIC_HOST.fullmatch(host):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address_kind(address: IPAddress) -> AddressKind | None:
    """Why `address` is not a public internet address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 one: mapped (::ffff:a.b.c.d) and 6to4 (2002:aabb:ccdd::) are that address.
        embedded = address.ipv4_mapped if address.ipv4_mapped is not None else address.sixtofour
        if embedded is not None:
            return _address_kind(embedded)
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if any(address in network for network in _PRIVATE_NETWORKS):
        return "private"
    return None


def _label(kind: AddressKind) -> str:
    return kind.replace("_", "-")
