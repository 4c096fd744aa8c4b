"""Fetching image URLs that users send, without becoming a proxy into the operator's network.

Only http(s); every hop of a redirect chain is checked; the host's addresses are checked before
connecting and the address actually connected to is checked again (DNS rebinding) before the
body is read. Bodies are streamed with a byte cap. `data:` URIs are decoded in place.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx

from .errors import InvalidRequest, PayloadTooLarge

MAX_REDIRECTS = 5


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def decode_data_uri(uri: str, param: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise InvalidRequest(f"'{param}' is not a valid data URI.", param=param)
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"'{param}' data URI has invalid base64.", param=param) from exc


def _host_and_port(url: str, param: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a bad port or an unclosed IPv6 bracket
        raise InvalidRequest(f"'{param}' is not a valid URL: {exc}.", param=param) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"'{param}' must be an http(s) URL or a data URI.", param=param)
    return parts.hostname, port


async def _check_host(host: str, port: int, param: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
        raise InvalidRequest(f"'{param}': cannot resolve host {host!r}.", param=param) from exc
    for info in infos:
        if not is_public_address(str(info[4][0])):
            raise InvalidRequest(
                f"'{param}': {host!r} resolves to a private, loopback or link-local address; "
                "fetching it is not allowed.",
                param=param,
                code="url_not_allowed",
            )


def _peer_address(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    addr = stream.get_extra_info("server_addr")
    return str(addr[0]) if addr else None


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
    """The bytes behind an http(s) or data: URL that a user sent."""
    if url.startswith("data:"):
        data = decode_data_uri(url, param)
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"'{param}' is larger than {max_bytes} bytes.", param=param)
        return data
    for _ in range(MAX_REDIRECTS + 1):
        host, port = _host_and_port(url, param)
        if not allow_private:
            await _check_host(host, port, param)
        try:
            async with client.stream("GET", url, follow_redirects=False, timeout=timeout) as response:
                peer = _peer_address(response)
                if not allow_private and peer is not None and not is_public_address(peer):
                    raise InvalidRequest(f"'{param}': URL connected to a non-public address.", param=param,
                                         code="url_not_allowed")
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"'{param}': fetching the URL gave HTTP {response.status_code}.", param=param,
                        code="image_fetch_failed",
                    )
                return await _read_capped(response, max_bytes, param)
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            raise InvalidRequest(f"'{param}': could not fetch the URL ({type(exc).__name__}).", param=param,
                                 code="image_fetch_failed") from exc
    raise InvalidRequest(f"'{param}': too many redirects.", param=param, code="image_fetch_failed")
