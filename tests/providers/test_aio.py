"""Contract of `imagegate.providers.aio`: upstream calls over aiohttp keep every behaviour of
`transport.send` (the twin of tests/providers/test_transport.py's httpx mapping), against real
loopback servers."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from imagegate.errors import ImagegateError, UpstreamConnectionError, UpstreamError, UpstreamTimeout
from imagegate.providers import aio
from imagegate.providers.transport import send
from tests.fakes.gemini import FakeGemini, Hang, RawResponse

from ..conftest import RunningGateway


def _all_subclasses(cls: type) -> list[type]:
    out: list[type] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return list(dict.fromkeys(out))


AIOHTTP_ERRORS = [c for c in _all_subclasses(aiohttp.ClientError) if c.__module__.startswith("aiohttp")]


def _instantiate(cls: type[BaseException]) -> BaseException:
    """Every aiohttp error class; their constructors differ, the mapping reads only the class."""
    try:
        return cls("boom")
    except TypeError:
        exc = cls.__new__(cls)
        Exception.__init__(exc, "boom")
        return exc


def test_the_walk_finds_the_aiohttp_error_tree() -> None:
    names = {c.__name__ for c in AIOHTTP_ERRORS}
    for expected in (
        "ClientConnectionError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "ClientPayloadError",
        "ClientResponseError",
        "InvalidURL",
        "TooManyRedirects",
        "ClientSSLError",
    ):
        assert expected in names


@pytest.mark.parametrize("cls", [*AIOHTTP_ERRORS, TimeoutError], ids=lambda c: c.__name__)
def test_transport_error_maps_every_aiohttp_error_to_a_server_side_error(cls: type[BaseException]) -> None:
    err = aio.transport_error("someprovider", _instantiate(cls))
    assert isinstance(err, ImagegateError)
    assert err.status_code >= 500
    if issubclass(cls, TimeoutError):
        assert isinstance(err, UpstreamTimeout) and err.status_code == 504 and err.code == "upstream_timeout"
    else:
        assert err.status_code != 504
        assert "someprovider" in err.message or err.code == "upstream_bad_response"


@pytest.mark.parametrize(
    "cls",
    [aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError],
)
def test_connection_failures_are_unavailable(cls: type[BaseException]) -> None:
    err = aio.transport_error("p", _instantiate(cls))
    assert type(err) is UpstreamConnectionError and err.status_code == 503 and err.code == "upstream_connection_error"


BODY = {"contents": [{"role": "user", "parts": [{"text": "p"}]}]}


@pytest.fixture
async def fast() -> AsyncIterator[tuple[httpx.AsyncClient, aio.AiohttpUpstream]]:
    async with httpx.AsyncClient() as client:
        upstream = aio.attach(client)
        yield client, upstream
        await upstream.aclose()


async def _post(client: httpx.AsyncClient, url: str, **kwargs: Any) -> Any:
    options = {"provider": "p", "timeout": 5.0, "max_bytes": 10_000_000, **kwargs}
    return await send(client, "POST", url, **options)


async def test_a_call_goes_over_aiohttp_with_its_json_and_headers(fast: Any, fake_gemini: FakeGemini) -> None:
    client, _ = fast
    fake_gemini.enqueue(RawResponse(200, '{"ok": true}', content_type="application/json", headers={"retry-after": "7"}))
    response = await _post(
        client,
        f"{fake_gemini.base_url}/v1beta/models/m:generateContent",
        json={"contents": [{"parts": [{"text": "é"}]}]},
        headers={"x-goog-api-key": fake_gemini.api_key},
    )
    assert (response.status_code, json.loads(response.body)) == (200, {"ok": True})
    assert response.headers["retry-after"] == "7"
    [seen] = fake_gemini.requests
    assert "aiohttp" in seen.headers["user-agent"] and seen.headers["x-goog-api-key"] == fake_gemini.api_key
    assert seen.json == {"contents": [{"parts": [{"text": "é"}]}]}


async def test_the_size_cap_is_applied_while_reading(fast: Any, fake_gemini: FakeGemini) -> None:
    client, _ = fast
    fake_gemini.enqueue(RawResponse(200, "x" * 5000, content_type="application/json"))
    with pytest.raises(UpstreamError) as info:
        await _post(
            client,
            f"{fake_gemini.base_url}/v1beta/models/m:generateContent",
            json=BODY,
            max_bytes=4096,
            headers={"x-goog-api-key": fake_gemini.api_key},
        )
    assert info.value.code == "upstream_response_too_large"


async def test_a_silent_upstream_is_a_timeout(fast: Any, fake_gemini: FakeGemini) -> None:
    client, _ = fast
    fake_gemini.enqueue(Hang(30))
    with pytest.raises(UpstreamTimeout):
        await _post(
            client,
            f"{fake_gemini.base_url}/v1beta/models/m:generateContent",
            json=BODY,
            timeout=0.3,
            headers={"x-goog-api-key": fake_gemini.api_key},
        )


async def test_a_refused_connection_is_unavailable(fast: Any) -> None:
    client, _ = fast
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(UpstreamConnectionError) as info:
        await _post(client, f"http://127.0.0.1:{port}/x", json={})
    assert info.value.code == "upstream_connection_error"


@pytest.mark.parametrize(
    "url,kwargs",
    [
        ("ftp://example.invalid/x", {}),
        ("http://[::1/x", {}),
        ("http://127.0.0.1:1/\udfff", {}),
        ("http://bücher.example/x", {}),
        ("http://127.0.0.1:1/x", {"files": {"f": b"x"}}),
    ],
)
async def test_what_aiohttp_does_not_take_as_httpx_does_is_left_to_httpx(
    fast: Any, url: str, kwargs: dict[str, Any]
) -> None:
    _, upstream = fast
    assert await upstream.exchange("POST", url, timeout=1.0, max_bytes=10, **kwargs) is None


async def test_with_a_proxy_in_the_environment_httpx_makes_the_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with httpx.AsyncClient() as client:
        upstream = aio.attach(client)
        assert await upstream.exchange("GET", "https://example.com/", timeout=1.0, max_bytes=10) is None


@pytest.mark.parametrize("setting,agent", [("aiohttp", "aiohttp"), ("httpx", "python-httpx")])
def test_the_gateway_calls_its_upstream_with_the_configured_client(
    gateway_factory: Any, fake_gemini: FakeGemini, setting: str, agent: str
) -> None:
    gateway: RunningGateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, upstream_client=setting
    )
    result = gateway.client().images.generate(
        model="gemini-3-pro-image-preview", prompt="p", response_format="b64_json"
    )
    assert result.data and result.data[0].b64_json
    assert agent in fake_gemini.requests[-1].headers["user-agent"]


async def _raw_server(answer: bytes) -> tuple[asyncio.AbstractServer, str]:
    """A loopback HTTP/1.1 server that answers every request with these exact bytes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("whole_body_bytes", [aio.WHOLE_BODY_BYTES, 1000], ids=["awaited-whole", "buffer-by-buffer"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_of_many_buffers_is_read_whole_and_capped(
    fast: Any, framing: str, whole_body_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body is read buffer by buffer (no re-chunking copy), or awaited whole when its declared
    length fits: several megabytes, and a chunked body whose chunk boundaries are not its end,
    come back whole; the cap still counts every byte."""
    monkeypatch.setattr(aio, "WHOLE_BODY_BYTES", whole_body_bytes)
    client, _ = fast
    body = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB, more than one socket read
    if framing == "chunked":
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    else:
        payload = body
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    server, url = await _raw_server(head + payload)
    try:
        response = await send(client, "GET", url, provider="t", timeout=10, max_bytes=len(body))
        assert response.body == body
        with pytest.raises(UpstreamError) as info:
            await send(client, "GET", url, provider="t", timeout=10, max_bytes=len(body) - 1)
        assert info.value.code == "upstream_response_too_large"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("whole_body_bytes", [aio.WHOLE_BODY_BYTES, 1000], ids=["awaited-whole", "buffer-by-buffer"])
async def test_a_body_cut_short_of_its_length_is_a_connection_error(
    fast: Any, whole_body_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aio, "WHOLE_BODY_BYTES", whole_body_bytes)
    client, _ = fast
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 500000\r\nconnection: close\r\n\r\n"
    server, url = await _raw_server(head + b"x" * 200_000)
    try:
        with pytest.raises(UpstreamConnectionError):
            await send(client, "GET", url, provider="t", timeout=10, max_bytes=10_000_000)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_compressed_body_is_capped_by_what_it_decompresses_to(fast: Any) -> None:
    """Its declared length is the compressed one, so it is never awaited whole on that length."""
    client, _ = fast
    body = b"a" * 3_000_000
    packed = gzip.compress(body)
    head = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(packed)
    server, url = await _raw_server(head + packed)
    try:
        response = await send(client, "GET", url, provider="t", timeout=10, max_bytes=len(body))
        assert response.body == body
        with pytest.raises(UpstreamError) as info:
            await send(client, "GET", url, provider="t", timeout=10, max_bytes=len(body) // 2)
        assert info.value.code == "upstream_response_too_large"
    finally:
        server.close()
        await server.wait_closed()
