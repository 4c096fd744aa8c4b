"""imagegate.fetch: the SSRF guard's address check, redirects, byte caps and data URIs.

HTTP goes through `httpx.MockTransport`, so no test depends on DNS or the network; the host
check is monkeypatched where a test needs "public.example" to count as public.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from imagegate import fetch
from imagegate.errors import InvalidRequest, PayloadTooLarge
from imagegate.fetch import fetch_image_url, is_public_address

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
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


# --- fetching -------------------------------------------------------------------------------


async def fake_check_host(host: str, port: int, param: str) -> None:
    """Like the real _check_host without DNS: loopback names are private, the rest public."""
    if host in ("127.0.0.1", "localhost"):
        raise InvalidRequest(
            f"'{param}': {host!r} resolves to a private, loopback or link-local address; "
            "fetching it is not allowed.",
            param=param,
            code="url_not_allowed",
        )


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "_check_host", fake_check_host)


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def get(url: str, handler: Callable[[httpx.Request], httpx.Response], *, max_bytes: int = 1_000_000,
              allow_private: bool = False) -> bytes:
    async with mock_client(handler) as client:
        return await fetch_image_url(url, client=client, param="images", max_bytes=max_bytes,
                                     allow_private=allow_private)


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


async def test_direct_loopback_url_is_refused_before_any_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not run
        raise AssertionError("the guard let a loopback URL through")

    with pytest.raises(InvalidRequest) as info:
        await get("http://localhost:8080/a.png", handler)
    assert info.value.code == "url_not_allowed"


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


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "http:///nohost",
                                 "javascript:alert(1)"])
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
