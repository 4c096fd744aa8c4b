"""Fetching image URLs that users send, without becoming a proxy into the operator's network.

The SSRF guard sits at the connection layer: `GuardedBackend` is the httpcore network backend
of the fetch client, so every TCP connection it opens (the first URL and each redirect hop
alike) resolves the host once, judges every address, and connects to a checked address. There
is no second resolution for a DNS-rebinding name to answer differently. IPv4 addresses embedded
in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) are judged by their IPv4 address.

`ImageFetcher` fetches on connections apart from the upstream calls' (a pool per fetch), caps
each fetch's total time, and limits how many fetches one API key runs at once, so one tenant's
slow URLs cannot starve anyone else. Bodies are streamed with a byte cap; `data:` URIs are
decoded in place. `own_result_name` recognises this gateway's own result URLs, which the
service reads from its result store instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from urllib.parse import urljoin, urlsplit

import anyio
import httpcore
import httpx

from .errors import InvalidRequest, PayloadTooLarge
from .providers import transport

MAX_REDIRECTS = 5

# Prefixes whose addresses carry an IPv4 address in their last 32 bits.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local-use, never public

# (host, port) -> the host's addresses; a seam for tests (fake DNS) and the only resolution made.
Resolver = Callable[[str, int], Awaitable[list[str]]]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 address stands for, when it is one of the embedding forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        if ip.teredo is not None:  # (server, client): both must be public, and the v6 address too
            return ip.is_global and all(is_public_address(str(v4)) for v4 in ip.teredo)
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def _literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


def is_private_literal(host: str) -> bool:
    """True when `host` is an IP address literal that is not public (a name is judged when resolved)."""
    literal = _literal_address(host)
    return literal is not None and not is_public_address(literal)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address of `host`, in the resolver's order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressNotAllowed(Exception):
    """Raised by the backend; `fetch_image_url` turns it into the client's 400."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} -> {address}")
        self.host = host
        self.address = address


class HostNotResolved(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves each host itself, refuses non-public addresses
    (unless private ones are allowed) and connects to the checked address. TLS still verifies and
    sends SNI for the host name (httpcore takes those from the URL, not from what we connect to)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver = resolve_host,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        try:
            addresses = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:  # socket.gaierror; UnicodeError: a name IDNA cannot encode
            raise HostNotResolved(host) from exc
        if not addresses:
            raise HostNotResolved(host)
        if not self.allow_private:
            blocked = next((a for a in addresses if not is_public_address(a)), None)
            if blocked is not None:  # one bad answer taints the name: round-robin could pick it
                raise AddressNotAllowed(host, blocked)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in await self.checked_addresses(host, port):
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # the next address may answer
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("image URLs are fetched over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with httpcore's pool rebuilt around a `GuardedBackend`: httpx has no
    public parameter for the network backend, and this keeps its request/response mapping."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)  # the context given: no CA bundle load per fetch
        self._pool = httpcore.AsyncConnectionPool(ssl_context=ssl_context, network_backend=backend)


def guarded_client(
    *,
    allow_private: bool,
    resolver: Resolver = resolve_host,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through the SSRF guard. No environment
    proxies (trust_env=False): a proxy would be the only address ever checked."""
    backend = GuardedBackend(allow_private=allow_private, resolver=resolver, inner=network_backend)
    context = ssl_context or httpx.create_ssl_context(trust_env=False)
    return httpx.AsyncClient(transport=_GuardedTransport(backend, context), trust_env=False)


def decode_data_uri(uri: str, param: str) -> bytes:
    """A user's data URI, decoded by the transport's one decoder; malformed is the client's 400."""
    try:
        return transport.decode_data_uri(uri)
    except ValueError as exc:
        raise InvalidRequest(f"'{param}' {exc}.", param=param) from exc


def decode_data_uri_capped(uri: str, param: str, max_bytes: int) -> bytes:
    data = decode_data_uri(uri, param)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"'{param}' is larger than {max_bytes} bytes.", param=param)
    return data


def _host_and_port(url: str, param: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a bad port or an unclosed IPv6 bracket
        raise InvalidRequest(f"'{param}' is not a valid URL: {exc}.", param=param) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"'{param}' must be an http(s) URL or a data URI.", param=param)
    return parts.hostname, port


def _not_allowed(param: str, host: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}': {host!r} resolves to a private, loopback or link-local address; fetching it is not allowed.",
        param=param,
        code="url_not_allowed",
    )


async def _read_capped(response: httpx.Response, max_bytes: int, param: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"'{param}': the image at the URL is larger than {max_bytes} bytes.", param=param)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"'{param}': the image at the URL is larger than {max_bytes} bytes.", param=param)
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch_image_url(
    url: str,
    *,
    client: httpx.AsyncClient,
    param: str,
    max_bytes: int,
    allow_private: bool,
    timeout: float = 30.0,
) -> bytes:
    """The bytes behind an http(s) or data: URL that a user sent. `client` should be a
    `guarded_client`; a literal address is judged here too, before any connection is tried."""
    if url.startswith("data:"):
        return decode_data_uri_capped(url, param, max_bytes)
    for _ in range(MAX_REDIRECTS + 1):
        host, _port = _host_and_port(url, param)
        if not allow_private and is_private_literal(host):
            raise _not_allowed(param, host)
        try:
            async with client.stream("GET", url, follow_redirects=False, timeout=timeout) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"'{param}': fetching the URL gave HTTP {response.status_code}.",
                        param=param,
                        code="image_fetch_failed",
                    )
                return await _read_capped(response, max_bytes, param)
        except AddressNotAllowed as exc:
            raise _not_allowed(param, exc.host) from exc
        except HostNotResolved as exc:
            raise InvalidRequest(f"'{param}': cannot resolve host {exc.host!r}.", param=param) from exc
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            raise InvalidRequest(
                f"'{param}': could not fetch the URL ({type(exc).__name__}).", param=param, code="image_fetch_failed"
            ) from exc
    raise InvalidRequest(f"'{param}': too many redirects.", param=param, code="image_fetch_failed")


class KeyedLimiter:
    """At most `limit` holders per key at once; a key's semaphore lives only while in use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[str | None, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, key: str | None) -> AsyncIterator[None]:
        semaphore, users = self._slots[key] if key in self._slots else (asyncio.Semaphore(self.limit), 0)
        self._slots[key] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[key]
            if users <= 1:
                del self._slots[key]
            else:
                self._slots[key] = (semaphore, users - 1)


class ImageFetcher:
    """URL fetching for the gateway, apart from the upstream connection pool: a total-time cap
    per fetch (a URL that drips bytes is cut at `timeout_seconds`, not kept alive by each byte),
    and at most `concurrency_per_key` fetches per API key at once (waiting counts against the
    request's deadline, not against the fetch cap).

    Each fetch gets a connection pool of its own, closed when the fetch ends however it ends.
    A shared pool leaks: httpcore closes a connection on the cancel path, and a second cancel
    during that close (the fetch cap, the request deadline, a failing sibling image and a client
    disconnect can all fire together) leaves it open and counted as active, for as long as the
    URL keeps dripping. Closing the whole pool closes such a connection too. The cost is no
    keep-alive between fetches; user image URLs seldom share a host within seconds."""

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_seconds: float,
        concurrency_per_key: int,
        resolver: Resolver = resolve_host,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.timeout_seconds = timeout_seconds
        self.resolver = resolver
        self.network_backend = network_backend
        self.limiter = KeyedLimiter(concurrency_per_key)
        self._ssl_context = httpx.create_ssl_context(trust_env=False)  # loading the CA bundle is the slow part
        self._closing: set[asyncio.Task[None]] = set()

    async def fetch(self, url: str, *, param: str, max_bytes: int, key_id: str | None) -> bytes:
        if url.startswith("data:"):  # no network, no slot
            return decode_data_uri_capped(url, param, max_bytes)
        async with self.limiter.slot(key_id):
            client = guarded_client(
                allow_private=self.allow_private,
                resolver=self.resolver,
                network_backend=self.network_backend,
                ssl_context=self._ssl_context,
            )
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    return await fetch_image_url(
                        url,
                        client=client,
                        param=param,
                        max_bytes=max_bytes,
                        allow_private=self.allow_private,
                        timeout=self.timeout_seconds,
                    )
            except TimeoutError as exc:
                raise InvalidRequest(
                    f"'{param}': fetching the URL took longer than {self.timeout_seconds:g} s "
                    "(IMAGEGATE_FETCH_TIMEOUT_SECONDS).",
                    param=param,
                    code="image_fetch_timeout",
                ) from exc
            finally:
                await self._close(client)

    async def _close(self, client: httpx.AsyncClient) -> None:
        """Close in a task of its own, so a further cancel of the fetch cannot interrupt it."""
        closing = asyncio.ensure_future(client.aclose())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        await asyncio.shield(closing)

    async def aclose(self) -> None:
        """Wait for closes that outlived their fetch (the gateway is shutting down)."""
        await asyncio.gather(*self._closing, return_exceptions=True)


# --- result URLs of this gateway ------------------------------------------------------------------

_RESULT_PATH = re.compile(r"/(?:openai/)?v1/results/(?P<name>[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9]+)?)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_and_path(url: str) -> tuple[tuple[str, str, int], str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return (scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]), parts.path


def own_result_name(url: str, bases: Iterable[str]) -> str | None:
    """The result name when `url` is a result URL of this gateway: the path shape the images
    response hands out (`/v1/results/<name>` or `/openai/v1/results/<name>`, below the base's
    own path) on an origin the gateway answers to (`bases`). None for any other URL."""
    target = _origin_and_path(url)
    if target is None or "?" in url or "#" in url:
        return None
    origin, path = target
    for base in bases:
        known = _origin_and_path(base)
        if known is None or known[0] != origin:
            continue
        prefix = known[1].rstrip("/")
        if path.startswith(prefix) and (match := _RESULT_PATH.fullmatch(path[len(prefix) :])):
            return match["name"]
    return None
