"""imagegate.fetch: the SSRF guard's address check, redirects, byte caps and data URIs.

Redirect and cap logic goes through `httpx.MockTransport`. The connection-layer guard is tested
with real loopback servers: DNS is faked at the one seam the backend calls (its resolver), and
"public" addresses are reached through a network backend that maps them onto loopback ports,
so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpcore
import httpx
import pytest

from imagegate import fetch
from imagegate.errors import InvalidRequest, PayloadTooLarge
from imagegate.fetch import ImageFetcher, fetch_image_url, guarded_client, is_public_address, own_result_name

from .fakes.image_host import PNG as HOSTED_PNG
from .fakes.image_host import ImageHost

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.254", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),  # scoped link-local
        ("fc00::1", False),  # unique local
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:169.254.169.254", False),
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("172.32.0.1", True),  # just outside 172.16/12
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        # IPv4 embedded in IPv6 is judged by its IPv4 address.
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::169.254.169.254", False),
        ("::8.8.8.8", True),
        ("64:ff9b::127.0.0.1", False),  # NAT64 well-known prefix
        ("64:ff9b::10.0.0.1", False),
        ("64:ff9b::8.8.8.8", True),
        ("64:ff9b:1::808:808", False),  # NAT64 local-use prefix
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", True),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo (client 192.0.2.45)
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


# --- fetching -------------------------------------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def get(
    url: str,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    max_bytes: int = 1_000_000,
    allow_private: bool = False,
) -> bytes:
    async with mock_client(handler) as client:
        return await fetch_image_url(
            url, client=client, param="images", max_bytes=max_bytes, allow_private=allow_private
        )


async def test_public_url_is_fetched() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=PNG)

    assert await get("http://public.example/a.png", handler) == PNG
    assert seen == ["http://public.example/a.png"]


async def test_redirect_to_loopback_is_refused() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "public.example":
            return httpx.Response(302, headers={"location": "http://127.0.0.1/x.png"})
        return httpx.Response(200, content=PNG)

    with pytest.raises(InvalidRequest) as info:
        await get("http://public.example/a.png", handler)
    assert info.value.code == "url_not_allowed"
    assert info.value.param == "images"
    assert seen == ["http://public.example/a.png"]  # the private hop was never requested


async def test_relative_redirect_is_followed_and_checked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a.png":
            return httpx.Response(301, headers={"location": "/b.png"})
        return httpx.Response(200, content=PNG)

    assert await get("http://public.example/a.png", handler) == PNG


async def test_redirect_to_private_allowed_when_configured() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "public.example":
            return httpx.Response(302, headers={"location": "http://127.0.0.1/x.png"})
        return httpx.Response(200, content=PNG)

    assert await get("http://public.example/a.png", handler, allow_private=True) == PNG


async def test_too_many_redirects() -> None:
    hops: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hops.append(request.url.path)
        n = int(request.url.path.strip("/r") or 0)
        return httpx.Response(302, headers={"location": f"/r{n + 1}"})

    with pytest.raises(InvalidRequest) as info:
        await get("http://public.example/r0", handler)
    assert "too many redirects" in info.value.message
    assert len(hops) == fetch.MAX_REDIRECTS + 1


async def test_five_redirects_are_fine() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.path.strip("/r") or 0)
        if n < fetch.MAX_REDIRECTS:
            return httpx.Response(302, headers={"location": f"/r{n + 1}"})
        return httpx.Response(200, content=PNG)

    assert await get("http://public.example/r0", handler) == PNG


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "http:///nohost", "javascript:alert(1)"]
)
async def test_only_http_urls(url: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not run
        raise AssertionError("fetched a non-http URL")

    with pytest.raises(InvalidRequest) as info:
        await get(url, handler)
    assert info.value.param == "images"


async def test_redirect_to_file_scheme_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "file:///etc/passwd"})

    with pytest.raises(InvalidRequest):
        await get("http://public.example/a.png", handler)


async def test_body_over_cap_with_content_length() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000)

    with pytest.raises(PayloadTooLarge) as info:
        await get("http://public.example/a.png", handler, max_bytes=4096)
    assert info.value.status_code == 413


class _Chunks(httpx.AsyncByteStream):
    """A body without Content-Length, so only the streaming count can stop it."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk = chunk
        self.count = count
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.sent += 1
            yield self.chunk


async def test_body_over_cap_without_content_length_stops_reading() -> None:
    stream = _Chunks(b"y" * 1024, 1000)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream)

    with pytest.raises(PayloadTooLarge):
        await get("http://public.example/a.png", handler, max_bytes=10_000)
    assert stream.sent < 20  # it stopped soon after the cap, not after 1 MB


async def test_body_exactly_at_cap_is_fine() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"z" * 4096)

    assert len(await get("http://public.example/a.png", handler, max_bytes=4096)) == 4096


async def test_http_error_status_is_a_400() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=b"nope")

    with pytest.raises(InvalidRequest) as info:
        await get("http://public.example/a.png", handler)
    assert info.value.code == "image_fetch_failed"
    assert info.value.status_code == 400


async def test_transport_error_is_a_400() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(InvalidRequest) as info:
        await get("http://public.example/a.png", handler)
    assert info.value.code == "image_fetch_failed"


# --- data URIs ----------------------------------------------------------------------------------


def _never(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not run
    raise AssertionError("a data URI must not cause a request")


async def test_data_uri_is_decoded_in_place() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert await get(uri, _never) == PNG


async def test_data_uri_bad_base64() -> None:
    with pytest.raises(InvalidRequest) as info:
        await get("data:image/png;base64,@@not-base64!!", _never)
    assert info.value.param == "images"


async def test_data_uri_without_comma() -> None:
    with pytest.raises(InvalidRequest):
        await get("data:image/png;base64", _never)


async def test_data_uri_over_cap() -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"a" * 2000).decode()
    with pytest.raises(PayloadTooLarge):
        await get(uri, _never, max_bytes=1000)


# --- the connection-layer guard, over real loopback sockets -----------------------------------

PUBLIC_IP = "8.8.8.8"  # what fake DNS answers for "public" names; connections to it land on a loopback server


class FakeDNS:
    """The backend's resolver: per-name answers, served in turn (the last answer repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(f"no such host: {host}")
        turns = self.answers[host]
        return turns.pop(0) if len(turns) > 1 else turns[0]


class LoopbackNetwork(httpcore.AsyncNetworkBackend):
    """The real network backend, except that PUBLIC_IP is served by a loopback port; records
    every address connected to."""

    def __init__(self, public_port: int) -> None:
        self.public_port = public_port
        self.connected: list[tuple[str, int]] = []
        self.real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        if host == PUBLIC_IP:
            host, port = "127.0.0.1", self.public_port
        assert host in ("127.0.0.1", "::1"), f"a test tried to reach {host}"
        return await self.real.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )


@pytest.fixture
def hosts() -> Iterator[tuple[ImageHost, ImageHost]]:
    """(public, internal): the server fake DNS makes public, and one that must never be reached."""
    with ImageHost(drip_interval=0.2) as public, ImageHost() as internal:
        yield public, internal


async def guarded_get(url: str, dns: FakeDNS, network: LoopbackNetwork, *, allow_private: bool = False) -> bytes:
    async with guarded_client(allow_private=allow_private, resolver=dns, network_backend=network) as client:
        return await fetch_image_url(
            url, client=client, param="images", max_bytes=1_000_000, allow_private=allow_private
        )


async def test_dns_rebinding_name_gets_no_request(hosts: tuple[ImageHost, ImageHost]) -> None:
    """A name that answers public first, then 127.0.0.1 to a second lookup: it is resolved once,
    the checked address is the one connected to, and the internal server sees nothing."""
    public, internal = hosts
    dns = FakeDNS({"rebind.example": [[PUBLIC_IP], ["127.0.0.1"]]})
    network = LoopbackNetwork(public.port)
    data = await guarded_get(f"http://rebind.example:{internal.port}/a.png", dns, network)
    assert data == HOSTED_PNG
    assert internal.hits == []
    assert public.hits == ["/a.png"]
    assert dns.lookups == ["rebind.example"]
    assert network.connected == [(PUBLIC_IP, internal.port)]
    assert public.host_headers == [f"rebind.example:{internal.port}"]  # Host stays the name


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], [PUBLIC_IP, "127.0.0.1"], ["::1"], ["::ffff:127.0.0.1"], ["64:ff9b::7f00:1"], ["169.254.169.254"]],
)
async def test_name_with_a_private_answer_is_refused_before_connecting(
    hosts: tuple[ImageHost, ImageHost], answer: list[str]
) -> None:
    public, internal = hosts
    dns = FakeDNS({"internal.example": [answer]})
    network = LoopbackNetwork(public.port)
    with pytest.raises(InvalidRequest) as info:
        await guarded_get(f"http://internal.example:{internal.port}/a.png", dns, network)
    assert (info.value.code, info.value.param) == ("url_not_allowed", "images")
    assert network.connected == []
    assert internal.hits == public.hits == []


async def test_redirect_to_a_private_name_is_refused_at_the_hop(hosts: tuple[ImageHost, ImageHost]) -> None:
    public, internal = hosts
    dns = FakeDNS({"public.example": [[PUBLIC_IP]], "internal.example": [["127.0.0.1"]]})
    network = LoopbackNetwork(public.port)
    target = f"http://internal.example:{internal.port}/a.png"
    with pytest.raises(InvalidRequest) as info:
        await guarded_get(f"http://public.example/redirect?to={target}", dns, network)
    assert info.value.code == "url_not_allowed"
    assert public.hits == ["/redirect"]
    assert internal.hits == []


async def test_private_names_are_fetched_when_allowed(hosts: tuple[ImageHost, ImageHost]) -> None:
    _, internal = hosts
    dns = FakeDNS({"internal.example": [["127.0.0.1"]]})
    network = LoopbackNetwork(0)
    assert (
        await guarded_get(f"http://internal.example:{internal.port}/a.png", dns, network, allow_private=True)
        == HOSTED_PNG
    )
    assert network.connected == [("127.0.0.1", internal.port)]


async def test_unresolvable_name_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        await guarded_get("http://nowhere.example/a.png", FakeDNS({}), LoopbackNetwork(0))
    assert info.value.param == "images"
    assert "cannot resolve" in info.value.message


async def test_environment_proxy_is_not_used(
    monkeypatch: pytest.MonkeyPatch, hosts: tuple[ImageHost, ImageHost]
) -> None:
    """A proxy would be the only address ever checked; the fetch client ignores HTTP(S)_PROXY."""
    public, internal = hosts
    monkeypatch.setenv("HTTP_PROXY", internal.url)
    dns = FakeDNS({"public.example": [[PUBLIC_IP]]})
    assert await guarded_get("http://public.example/a.png", dns, LoopbackNetwork(public.port)) == HOSTED_PNG
    assert internal.hits == []


# --- ImageFetcher: total-time cap and per-key concurrency -------------------------------------------


def loopback_fetcher(*, timeout_seconds: float = 30.0, concurrency_per_key: int = 8) -> ImageFetcher:
    return ImageFetcher(allow_private=True, timeout_seconds=timeout_seconds, concurrency_per_key=concurrency_per_key)


async def test_dripping_url_is_cut_at_the_total_cap(hosts: tuple[ImageHost, ImageHost]) -> None:
    """Each byte arrives well inside any per-read timeout; only a total cap ends the fetch."""
    public, _ = hosts
    fetcher = loopback_fetcher(timeout_seconds=1.0)
    try:
        async with asyncio.timeout(15):  # a guard against a hang, far above the cap
            with pytest.raises(InvalidRequest) as info:
                await fetcher.fetch(f"{public.url}/drip", param="images", max_bytes=10_000_000, key_id="a")
    finally:
        await fetcher.aclose()
    assert (info.value.code, info.value.param, info.value.status_code) == ("image_fetch_timeout", "images", 400)


async def test_per_key_limit_holds_one_key_and_spares_another(hosts: tuple[ImageHost, ImageHost]) -> None:
    public, _ = hosts
    fetcher = loopback_fetcher(timeout_seconds=30.0, concurrency_per_key=2)
    drips = [
        asyncio.ensure_future(fetcher.fetch(f"{public.url}/drip", param="images", max_bytes=10_000_000, key_id="a"))
        for _ in range(6)
    ]
    try:
        async with asyncio.timeout(15):
            while public.open_drips < 2:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # time for any fetch beyond the limit to connect
            # Key "b" is not behind key "a"'s queue.
            assert (
                await fetcher.fetch(f"{public.url}/a.png", param="images", max_bytes=10_000_000, key_id="b")
                == HOSTED_PNG
            )
        assert public.peak_drips == 2
        assert public.hits.count("/drip") == 2
    finally:
        for task in drips:
            task.cancel()
        await asyncio.gather(*drips, return_exceptions=True)
        await fetcher.aclose()
    assert fetcher.limiter._slots == {}  # a key's semaphore goes when its last fetch does


# --- result URLs of this gateway ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://127.0.0.1:8000/v1/results/abc_DEF-1.png", "abc_DEF-1.png"),
        ("http://127.0.0.1:8000/openai/v1/results/abc.webp", "abc.webp"),
        ("HTTP://LOCALHOST:8000/v1/results/abc.png", "abc.png"),  # scheme and host are case-blind
        ("https://img.example.com/v1/results/abc.png", "abc.png"),  # the default port
        ("https://img.example.com:443/gw/v1/results/abc.png", "abc.png"),  # below the base's own path
        ("http://127.0.0.1:8000/v1/results/abc.png?x=1", None),
        ("http://127.0.0.1:8001/v1/results/abc.png", None),  # another port is another origin
        ("http://10.0.0.1:8000/v1/results/abc.png", None),
        ("http://127.0.0.1:8000/v1/results/../keys", None),
        ("http://127.0.0.1:8000/v1/results/a/b.png", None),
        ("http://127.0.0.1:8000/v2/results/abc.png", None),
        ("https://img.example.com/v1/results/abc.png#frag", None),
    ],
)
def test_own_result_name(url: str, name: str | None) -> None:
    bases = ["http://127.0.0.1:8000", "http://localhost:8000/", "https://img.example.com", "https://img.example.com/gw"]
    assert own_result_name(url, bases) == name


# --- TLS: the connection goes to the checked IP, the certificate is checked for the name -------------


@pytest.fixture
def tls_host(tmp_path: Any) -> Iterator[tuple[int, ssl.SSLContext, list[str | None]]]:
    """A loopback HTTPS server with a self-signed certificate for img.example only (not for
    127.0.0.1); returns (port, a client context trusting it, the SNI names it was sent)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=img.example",
            "-addext",
            "subjectAltName=DNS:img.example",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_context.sni_callback = record_sni  # type: ignore[assignment]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with server_context.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n"
                        b"connection: close\r\n\r\n%s" % (len(HOSTED_PNG), HOSTED_PNG)
                    )
            except (OSError, ssl.SSLError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(cert))
    yield port, client_context, names
    listener.close()
    thread.join(timeout=5)


async def test_tls_verifies_and_sends_the_host_name_not_the_address(
    tls_host: tuple[int, ssl.SSLContext, list[str | None]],
) -> None:
    port, context, names = tls_host
    dns = FakeDNS({"img.example": [["127.0.0.1"]]})
    async with guarded_client(allow_private=True, resolver=dns, ssl_context=context) as client:
        data = await fetch_image_url(
            f"https://img.example:{port}/a.png", client=client, param="images", max_bytes=1_000_000, allow_private=True
        )
    assert data == HOSTED_PNG
    assert names == ["img.example"]
