"""The egress guard: URLs refused at registration, names refused after resolution at connect time, the
connection made to the address that was checked, and REELAY_WEBHOOK_ALLOW_PRIVATE as the one way around it."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
import httpx
import pytest

from service import egress
from service.capabilities import url_problem
from service.dev import dev_settings
from service.egress import GuardedTransport, IPAddress, Resolver, TargetRefused, check_target
from service.errors import ConfigError
from service.providers import ADAPTERS
from service.settings import Settings

PUBLIC = ipaddress.ip_address("93.184.215.14")
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def test_the_public_surface() -> None:
    assert set(egress.__all__) == {
        "GuardedResolver",
        "GuardedTransport",
        "IPAddress",
        "Reason",
        "Resolver",
        "TargetRefused",
        "check_target",
        "screened",
        "system_resolver",
    }


# -- at registration: the URL alone ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "details"),
    [
        pytest.param("http://127.0.0.1/hook", ("loopback", "127.0.0.1", "127.0.0.1"), id="dotted"),
        pytest.param("http://127.1/hook", ("loopback", "127.1", "127.0.0.1"), id="short"),
        pytest.param("http://2130706433/hook", ("loopback", "2130706433", "127.0.0.1"), id="decimal"),
        pytest.param("http://0x7f000001/hook", ("loopback", "0x7f000001", "127.0.0.1"), id="hex"),
        pytest.param("http://0x7f.1/hook", ("loopback", "0x7f.1", "127.0.0.1"), id="dotted-hex"),
        pytest.param("http://017700000001/hook", ("loopback", "017700000001", "127.0.0.1"), id="octal"),
        pytest.param("http://127.0.0.1./hook", ("loopback", "127.0.0.1.", "127.0.0.1"), id="trailing-dot"),
        pytest.param("http://[::1]/hook", ("loopback", "::1", "::1"), id="ipv6"),
        pytest.param("http://[::ffff:127.0.0.1]/hook", ("loopback", "::ffff:127.0.0.1", "127.0.0.1"), id="v4-mapped"),
        pytest.param("http://[::ffff:7f00:1]/hook", ("loopback", "::ffff:7f00:1", "127.0.0.1"), id="v4-mapped-hex"),
        pytest.param("http://[2002:7f00:1::]/hook", ("loopback", "2002:7f00:1::", "2002:7f00:1::"), id="6to4"),
        pytest.param("http://localhost:9000/hook", ("loopback", "localhost", None), id="localhost"),
        pytest.param("http://LOCALHOST/hook", ("loopback", "localhost", None), id="localhost-upper-case"),
        pytest.param("http://localhost./hook", ("loopback", "localhost.", None), id="localhost-fqdn"),
        pytest.param("http://api.localhost/hook", ("loopback", "api.localhost", None), id="sub-localhost"),
        pytest.param("http://10.1.2.3/hook", ("private", "10.1.2.3", "10.1.2.3"), id="private-10"),
        pytest.param("http://172.16.0.1/hook", ("private", "172.16.0.1", "172.16.0.1"), id="private-172"),
        pytest.param("http://192.168.1.1/hook", ("private", "192.168.1.1", "192.168.1.1"), id="private-192"),
        pytest.param("http://3232235777/hook", ("private", "3232235777", "192.168.1.1"), id="private-decimal"),
        pytest.param("http://100.64.0.1/hook", ("private", "100.64.0.1", "100.64.0.1"), id="shared-cgnat"),
        pytest.param("http://[fd00::1]/hook", ("private", "fd00::1", "fd00::1"), id="unique-local"),
        pytest.param("http://[fec0::1]/hook", ("private", "fec0::1", "fec0::1"), id="site-local"),
        pytest.param("http://[2002:a00:1::]/hook", ("private", "2002:a00:1::", "2002:a00:1::"), id="6to4-private"),
        pytest.param("http://169.254.169.254/", ("link_local", "169.254.169.254", "169.254.169.254"), id="metadata"),
        pytest.param("http://2852039166/", ("link_local", "2852039166", "169.254.169.254"), id="metadata-decimal"),
        pytest.param("http://0xa9fea9fe/", ("link_local", "0xa9fea9fe", "169.254.169.254"), id="metadata-hex"),
        pytest.param("http://[fe80::1]/hook", ("link_local", "fe80::1", "fe80::1"), id="ipv6-link-local"),
        pytest.param("http://[fe80::1%25eth0]/", ("link_local", "fe80::1%25eth0", "fe80::1%25eth0"), id="zone-id"),
        pytest.param("http://224.0.0.1/hook", ("multicast", "224.0.0.1", "224.0.0.1"), id="multicast"),
        pytest.param("http://[ff02::1]/hook", ("multicast", "ff02::1", "ff02::1"), id="ipv6-multicast"),
        pytest.param("http://0.0.0.0/hook", ("unspecified", "0.0.0.0", "0.0.0.0"), id="unspecified"),
        pytest.param("http://0/hook", ("unspecified", "0", "0.0.0.0"), id="unspecified-decimal"),
        pytest.param("http://0.1.2.3/hook", ("unspecified", "0.1.2.3", "0.1.2.3"), id="this-network"),
        pytest.param("http://[::]/hook", ("unspecified", "::", "::"), id="ipv6-unspecified"),
        pytest.param("http://240.0.0.1/hook", ("reserved", "240.0.0.1", "240.0.0.1"), id="reserved"),
        pytest.param("http://255.255.255.255/", ("reserved", "255.255.255.255", "255.255.255.255"), id="broadcast"),
        pytest.param("http://[64:ff9b::7f00:1]/", ("reserved", "64:ff9b::7f00:1", "64:ff9b::7f00:1"), id="nat64"),
    ],
)
def test_a_non_public_host_is_refused_naming_why(url: str, details: tuple[str, str, str | None]) -> None:
    reason, host, address = details
    with pytest.raises(TargetRefused) as refused:
        check_target(url)
    expected = {"reason": reason, "host": host} | ({"address": address} if address else {})
    assert refused.value.details == expected
    assert refused.value.message == f"the host {host} is a non-public address ({reason.replace('_', '-')})"


@pytest.mark.parametrize(
    ("url", "reason", "message"),
    [
        pytest.param("ftp://hooks.example.com/x", "unsupported_scheme", "the scheme 'ftp:' is not accepted", id="ftp"),
        pytest.param("file:///etc/passwd", "unsupported_scheme", "the scheme 'file:' is not accepted", id="file"),
        pytest.param("gopher://hooks.example.com/_x", "unsupported_scheme", "the scheme 'gopher:'", id="gopher"),
        pytest.param("hooks.example.com/x", "unsupported_scheme", "not an absolute URL", id="relative"),
        pytest.param("https:///x", "no_host", "the URL has no host", id="no-host"),
        pytest.param("http://[::1/x", "invalid_url", "not a valid URL", id="broken-ipv6"),
    ],
)
def test_a_url_that_is_not_http_with_a_host_is_refused(url: str, reason: str, message: str) -> None:
    with pytest.raises(TargetRefused, match=message) as refused:
        check_target(url)
    assert refused.value.details == {"reason": reason}


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://hooks.example.com/reelay", id="name"),
        pytest.param("HTTPS://HOOKS.EXAMPLE.COM/reelay", id="upper-case"),
        pytest.param("http://hooks.example.com:8080/reelay", id="http-with-port"),
        pytest.param("https://93.184.215.14/reelay", id="public-ipv4"),
        pytest.param("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/reelay", id="public-ipv6"),
        pytest.param("https://[::ffff:93.184.215.14]/reelay", id="public-v4-mapped"),
        pytest.param("https://cafe.be/reelay", id="hex-letters-name"),
        pytest.param("https://localhost.example.com/reelay", id="localhost-as-a-label"),
    ],
)
def test_a_public_target_is_accepted(url: str) -> None:
    check_target(url)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:9000/hook", id="loopback"),
        pytest.param("http://[::1]:9000/hook", id="ipv6-loopback"),
        pytest.param("http://localhost:9000/hook", id="localhost"),
        pytest.param("http://10.1.2.3/hook", id="private"),
        pytest.param("http://[fd00::1]/hook", id="unique-local"),
    ],
)
def test_allow_private_lets_private_and_loopback_hosts_through(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(url)
    check_target(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://169.254.169.254/", "link_local", id="metadata"),
        pytest.param("http://[fe80::1]/", "link_local", id="ipv6-link-local"),
        pytest.param("http://224.0.0.1/", "multicast", id="multicast"),
        pytest.param("http://0.0.0.0/", "unspecified", id="unspecified"),
        pytest.param("http://240.0.0.1/", "reserved", id="reserved"),
        pytest.param("file:///etc/passwd", "unsupported_scheme", id="scheme"),
    ],
)
def test_allow_private_still_refuses_the_rest(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        check_target(url, allow_private=True)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("http://10.1.2.3/a.png", None, id="private-accepted"),
        pytest.param("http://[fd00::1]/a.png", None, id="unique-local-accepted"),
        pytest.param("http://127.1/a.png", "the host 127.1 is a non-public address (loopback)", id="loopback-refused"),
        pytest.param("ftp://cdn.example.com/a.png", "the scheme 'ftp:' is not accepted", id="scheme-refused"),
        pytest.param("data:image/png;base64,iVBORw0KGgo=", None, id="data-uri-accepted"),
    ],
)
def test_media_url_inputs_share_the_check_but_accept_private_hosts(url: str, problem: str | None) -> None:
    # The provider fetches a job's input URLs, not Reelay: a private host there is on the provider's network.
    assert url_problem(url) == problem


# -- the switch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        pytest.param(None, False, id="unset"),
        pytest.param("", False, id="empty"),
        pytest.param("false", False, id="false"),
        pytest.param("true", True, id="true"),
        pytest.param("TRUE", True, id="upper-case"),
    ],
)
def test_reelay_webhook_allow_private_is_read(value: str | None, allowed: bool) -> None:
    environ = {} if value is None else {"REELAY_WEBHOOK_ALLOW_PRIVATE": value}
    assert Settings.from_env(environ, adapters=ADAPTERS).webhook_allow_private is allowed


def test_a_bad_reelay_webhook_allow_private_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="REELAY_WEBHOOK_ALLOW_PRIVATE must be one of true, false"):
        Settings.from_env({"REELAY_WEBHOOK_ALLOW_PRIVATE": "yes"}, adapters=ADAPTERS)


def test_reelay_dev_allows_private_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REELAY_WEBHOOK_ALLOW_PRIVATE", raising=False)
    assert dev_settings(8000, 8100).webhook_allow_private


# -- at connect time, over real connections on loopback ----------------------------------------------


@dataclass
class Receiver:
    """An HTTP(S) server on 127.0.0.1 that answers 200 and keeps the head of each request it got."""

    port: int
    heads: list[bytes] = field(default_factory=list)

    def url(self, host: str, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}/hook"


@asynccontextmanager
async def receiving(tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(port=0)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            receiver.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a client that gave up, as one refusing the certificate does
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    receiver.port = server.sockets[0].getsockname()[1]
    async with server:
        yield receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as receiver:
        yield receiver


def resolving(table: dict[str, list[IPAddress]]) -> Resolver:
    """A resolver that answers from `table`, as a DNS server under the test's control would."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return table[host]

    return resolve


# `receiver.test` stands for any name whose DNS record points at 127.0.0.1.
REBOUND = resolving({"receiver.test": [LOOPBACK], "127.0.0.1": [LOOPBACK]})


LOOPBACK_TARGETS = [
    pytest.param("127.0.0.1", egress.system_resolver, id="by-address"),
    # The transport refuses no name as such: `localhost` is refused for the address the system resolver gives.
    pytest.param("localhost", egress.system_resolver, id="localhost-by-the-system-resolver"),
    pytest.param("receiver.test", REBOUND, id="a-name-resolving-to-127.0.0.1"),
]


@pytest.mark.parametrize(("host", "resolve"), LOOPBACK_TARGETS)
async def test_a_loopback_target_is_refused_at_connect_time_and_never_reached(
    receiver: Receiver, host: str, resolve: Resolver
) -> None:
    async with httpx.AsyncClient(transport=GuardedTransport(resolve=resolve)) as client:
        with pytest.raises(TargetRefused) as refused:
            await client.post(receiver.url(host), content=b"{}")
    assert (refused.value.reason, refused.value.host) == ("loopback", host)
    assert ipaddress.ip_address(refused.value.address or "").is_loopback  # `localhost` may resolve to ::1 first
    assert refused.value.request.url == receiver.url(host)
    assert receiver.heads == []


@pytest.mark.parametrize(("host", "resolve"), LOOPBACK_TARGETS)
async def test_allow_private_reaches_a_loopback_target_with_its_own_host_header(
    receiver: Receiver, host: str, resolve: Resolver
) -> None:
    async with httpx.AsyncClient(transport=GuardedTransport(allow_private=True, resolve=resolve)) as client:
        response = await client.post(receiver.url(host), content=b"{}")
    assert response.status_code == 200
    [head] = receiver.heads
    assert f"\r\nhost: {host}:{receiver.port}\r\n".encode() in head.lower()


async def test_a_refusal_is_an_httpx_connect_error(receiver: Receiver) -> None:
    # A sender that handles failed connections handles refusals, and logs the reason found on the exception.
    async with httpx.AsyncClient(transport=GuardedTransport()) as client:
        with pytest.raises(httpx.ConnectError, match=r"the host 127\.0\.0\.1 is a non-public address"):
            await client.get(receiver.url("127.0.0.1"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `receiver.test` only, and its key."""
    assert shutil.which("openssl"), "the TLS test makes its certificate with openssl (Debian: apt-get install openssl)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1"),
            *("-subj", "/CN=receiver.test", "-addext", "subjectAltName=DNS:receiver.test"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize(
    ("host", "verified"),
    [
        pytest.param("receiver.test", True, id="the-certificate-name"),
        pytest.param("other.test", False, id="another-name-on-the-same-address"),
    ],
)
async def test_tls_verifies_the_certificate_against_the_url_name_not_the_checked_address(
    certificate: tuple[Path, Path], host: str, verified: bool
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    resolve = resolving({"receiver.test": [LOOPBACK], "other.test": [LOOPBACK]})
    transport = GuardedTransport(allow_private=True, resolve=resolve, verify=client_tls)
    async with receiving(server_tls) as receiver, httpx.AsyncClient(transport=transport) as client:
        if verified:
            assert (await client.get(receiver.url(host, "https"))).status_code == 200
        else:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(receiver.url(host, "https"))


# -- at connect time, without the network: where each connection goes -------------------------------


class RecordingNetwork(httpcore.AsyncNetworkBackend):
    """Stands in for the network: records the address each connection was opened to and the name TLS was started
    with, and answers each connection with the next canned response (or fails connecting to `unreachable`)."""

    def __init__(self, responses: Iterable[bytes], unreachable: Iterable[str] = ()) -> None:
        self.responses = list(responses)
        self.unreachable = set(unreachable)
        self.connected: list[str] = []
        self.tls_names: list[str | None] = []
        self.sent = bytearray()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        if host in self.unreachable:
            raise httpcore.ConnectError(f"{host} is unreachable")
        return _RecordingStream(self, [self.responses.pop(0)])

    async def sleep(self, seconds: float) -> None:
        pass


class _RecordingStream(httpcore.AsyncMockStream):
    def __init__(self, network: RecordingNetwork, buffer: list[bytes]) -> None:
        super().__init__(buffer)
        self._network = network

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._network.sent += buffer

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self._network.tls_names.append(server_hostname)
        return self


OK = b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_a_public_name_is_connected_to_the_address_that_was_checked() -> None:
    network = RecordingNetwork([OK])
    resolve = resolving({"hooks.example.com": [PUBLIC]})
    async with httpx.AsyncClient(transport=GuardedTransport(resolve=resolve, network_backend=network)) as client:
        response = await client.post("https://hooks.example.com/reelay", content=b"{}")
    assert response.status_code == 204
    assert network.connected == ["93.184.215.14"]  # the checked address, never the name resolved a second time
    assert network.tls_names == ["hooks.example.com"]  # SNI and certificate checks are on the name
    assert b"\r\nHost: hooks.example.com\r\n" in network.sent


async def test_a_refused_address_is_skipped_for_an_allowed_one() -> None:
    network = RecordingNetwork([OK])
    resolve = resolving({"hooks.example.com": [LOOPBACK, PUBLIC]})
    async with httpx.AsyncClient(transport=GuardedTransport(resolve=resolve, network_backend=network)) as client:
        assert (await client.get("https://hooks.example.com/")).status_code == 204
    assert network.connected == ["93.184.215.14"]


async def test_an_unreachable_address_falls_back_to_the_next_checked_one() -> None:
    second = ipaddress.ip_address("93.184.215.15")
    network = RecordingNetwork([OK], unreachable=["93.184.215.14"])
    resolve = resolving({"hooks.example.com": [PUBLIC, second]})
    async with httpx.AsyncClient(transport=GuardedTransport(resolve=resolve, network_backend=network)) as client:
        assert (await client.get("https://hooks.example.com/")).status_code == 204
    assert network.connected == ["93.184.215.14", "93.184.215.15"]


async def test_a_redirect_followed_by_a_caller_is_checked_at_its_own_connection() -> None:
    redirect = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://internal.test/admin\r\nContent-Length: 0\r\n\r\n"
    network = RecordingNetwork([redirect])
    resolve = resolving({"hooks.example.com": [PUBLIC], "internal.test": [ipaddress.ip_address("10.0.0.5")]})
    transport = GuardedTransport(resolve=resolve, network_backend=network)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        with pytest.raises(TargetRefused) as refused:
            await client.get("https://hooks.example.com/")
    assert refused.value.details == {"reason": "private", "host": "internal.test", "address": "10.0.0.5"}
    assert network.connected == ["93.184.215.14"]


async def test_a_name_that_does_not_resolve_is_a_connect_error_not_a_refusal() -> None:
    async def unknown(host: str, port: int) -> list[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with httpx.AsyncClient(transport=GuardedTransport(resolve=unknown)) as client:
        with pytest.raises(httpx.ConnectError, match=r"cannot resolve nowhere\.example") as failed:
            await client.get("https://nowhere.example/")
    assert not isinstance(failed.value, TargetRefused)


async def test_slow_resolution_counts_against_the_connect_timeout() -> None:
    async def stalled(host: str, port: int) -> list[IPAddress]:
        await asyncio.Event().wait()
        return [PUBLIC]

    timeout = httpx.Timeout(5.0, connect=0.05)
    async with httpx.AsyncClient(transport=GuardedTransport(resolve=stalled), timeout=timeout) as client:
        async with asyncio.timeout(2):  # without the deadline the resolver would hold the request forever
            with pytest.raises(httpx.ConnectTimeout, match=r"resolving slow\.example took longer than 0\.05 s"):
                await client.get("https://slow.example/")
