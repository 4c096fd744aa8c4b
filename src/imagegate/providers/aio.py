"""Upstream calls over aiohttp: the same contract as `transport.send`, at a third of the CPU.

Measured on the bench's 2 MB Gemini answer (bench/README.md): httpx spends ~4 ms of CPU per call
at 16 concurrent calls (httpcore, anyio, h11 reading in 64 KiB pieces), aiohttp ~1.7 ms. Only the
upstream calls move: image-URL fetches keep httpx behind the SSRF guard (fetch.py), and a call
this module does not handle the same way (multipart `files=`, a URL that is not plain http(s)) is
left to httpx, so its errors stay exactly what they were.

The gateway attaches one `AiohttpUpstream` to its shared httpx client (`attach`), and
`transport._exchange` asks `session_for(client)` first; a client nobody attached (a test's own)
stays on httpx.
The aiohttp session itself is opened on first use, inside the running loop, and closed with
the gateway. Its settings mirror the httpx client's: the same pool size, no redirects followed,
certifi's CA bundle, and `timeout` on every phase (connect, each read), not on the whole call, as
httpx's single-float timeout does. Where the environment names a proxy (HTTP_PROXY, HTTPS_PROXY,
ALL_PROXY), httpx makes every call, as before: aiohttp's `trust_env` reads ~/.netrc in a worker
thread on every request, which cost more than the rest of the call.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
import weakref
from collections.abc import Mapping
from typing import Any

import aiohttp
import certifi
import httpx
from yarl import URL

from .. import jsonio
from ..errors import (
    ImagegateError,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)

# The keyword arguments of `send` this module takes as they are; any other goes to httpx.
HANDLED = frozenset({"json", "headers", "content", "params"})

_attached: weakref.WeakKeyDictionary[httpx.AsyncClient, AiohttpUpstream] = weakref.WeakKeyDictionary()


class TooLarge(Exception):
    """A response body over the cap (`transport.send` maps it, as its own `_TooLarge`)."""


# aiohttp stops reading a response once twice this much is buffered and unread (its default,
# 64 KiB, paused and resumed a 2 MB answer ~16 times: ~0.4 ms of CPU per call in the bench). The
# gateway holds the whole body anyway, so a body up to twice this size is read without a pause.
READ_BUFFER_BYTES = 4 * 1024 * 1024
WHOLE_BODY_BYTES = 2 * READ_BUFFER_BYTES

# What `exchange` raises; `transport.send` maps them with `transport_error`.
ERRORS = (aiohttp.ClientError, TimeoutError)


def transport_error(provider: str, exc: BaseException) -> ImagegateError:
    """An aiohttp (or asyncio timeout) exception as ours, the twin of transport.transport_error;
    a test checks that every aiohttp error class lands where its httpx sibling does."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are ones
        return UpstreamTimeout(f"{provider} did not answer in time ({name}).")
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return UpstreamConnectionError(f"Could not talk to {provider}: {name}.")
    if isinstance(exc, aiohttp.InvalidURL):
        return UpstreamBadResponse(f"{provider} sent a URL that cannot be requested.")
    return UpstreamError(f"Request to {provider} failed: {name}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # some aiohttp errors format attributes a bare instance lacks
        return "(no detail)"


class AiohttpUpstream:
    """One aiohttp session for every upstream call of a gateway."""

    def __init__(self, max_connections: int = 512) -> None:
        self.max_connections = max_connections
        # Proxies from the environment (as httpx reads them): then httpx keeps the calls.
        self.proxied = bool({k: v for k, v in urllib.request.getproxies().items() if k != "no"})
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session belongs to one loop (tests run gateways on several); a stale one is dropped.
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, ssl=ssl.create_default_context(cafile=certifi.where())
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=READ_BUFFER_BYTES)
            self._loop = loop
        return self._session

    async def exchange(
        self, method: str, url: str, *, timeout: float, max_bytes: int, **kwargs: Any
    ) -> tuple[int, httpx.Headers, bytes] | None:
        """The call's status, headers and body (at most `max_bytes`, read as it streams in), or
        None when this call is httpx's to make (see HANDLED). Raises ERRORS and TooLarge."""
        if self.proxied or not HANDLED.issuperset(kwargs) or not url.isascii():  # non-ASCII: httpx's IDNA
            return None
        try:
            target = URL(url, encoded=False)
        except (ValueError, TypeError, UnicodeError):
            return None  # httpx says what is wrong with it, as it always has
        if target.scheme not in ("http", "https") or not target.host:
            return None
        headers: dict[str, str] = dict(kwargs.get("headers") or {})
        data: bytes | None = kwargs.get("content")
        if "json" in kwargs:
            data = jsonio.dumps(kwargs["json"])
            headers.setdefault("content-type", "application/json")
        params: Mapping[str, str] | None = kwargs.get("params")
        limits = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
        async with self._current().request(
            method, target, data=data, headers=headers, params=params, timeout=limits, allow_redirects=False
        ) as response:
            body = await _read_capped(response, max_bytes)
            return response.status, httpx.Headers(list(response.raw_headers)), body

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
        self._session = None


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, as the buffers aiohttp received joined once.

    A body whose declared length fits the cap and the read buffer (and that aiohttp does not
    decompress, which could make it longer) is awaited whole: one wake-up at its end instead of
    one per buffer received. Any other is read buffer by buffer, counting against the cap.
    `readchunk` hands over each buffer as it is; `read(n)` / `iter_chunked(n)` would first join
    the buffered ones into a piece of their own, a second copy of every megabyte."""
    length = response.content_length
    if (
        length is not None
        and length <= min(max_bytes, WHOLE_BODY_BYTES)
        and not response.headers.get("content-encoding")
    ):
        await response.content.wait_eof()
        return response.content.read_nowait()
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk, end_of_http_chunk = await response.content.readchunk()
        if not chunk:
            if end_of_http_chunk:
                continue  # a chunked body's chunk boundary, not its end
            break
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def attach(client: httpx.AsyncClient, max_connections: int = 512) -> AiohttpUpstream:
    """Route `send`'s calls on `client` through aiohttp from now on."""
    upstream = _attached[client] = AiohttpUpstream(max_connections)
    return upstream


def session_for(client: httpx.AsyncClient) -> AiohttpUpstream | None:
    return _attached.get(client)
