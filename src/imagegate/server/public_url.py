"""The base of result URLs when IMAGEGATE_PUBLIC_URL is unset: the address the client called.

A client that called `localhost:8000` must get `http://localhost:8000/v1/results/...` back (the AI
SDK refuses to download an IP-literal URL when its base URL is a host name), so the request's
`Host` header is used. Behind a reverse proxy the proxy's `Forwarded` (RFC 7239 `host=` /
`proto=`) or `X-Forwarded-Host` / `X-Forwarded-Proto` say what the client called; they are
believed only when the direct peer is in IMAGEGATE_TRUSTED_PROXIES, since anyone can send them.
Of a list, the last value is taken: the one the trusted peer itself added.

Whatever the source, the host must be a plain host name or IP literal with an optional port,
in ASCII; anything else (a hostile `Host: evil/"><script>`) falls back to the configured
host and port, so nothing odd is ever spliced into a URL.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from ..config import IPNetwork

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>{_LABEL}(?:\.{_LABEL})*))(?::(?P<port>[0-9]{{1,5}}))?")
# One `key=value` pair of a Forwarded element; the value a token or a quoted string.
_PAIR = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')
_ELEMENTS = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
SCHEMES = ("http", "https")


def valid_host(host: str) -> bool:
    """A host name or IP literal (IPv6 in brackets), with an optional port 1-65535, ASCII only."""
    match = _HOST.fullmatch(host) if host.isascii() and len(host) <= 261 else None
    if match is None:
        return False
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return False
    elif match["name"] is not None and len(match["name"]) > 253:
        return False
    return match["port"] is None or 1 <= int(match["port"]) <= 65535


def is_trusted(peer: str | None, networks: Iterable[IPNetwork]) -> bool:
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)


def forwarded_pairs(header: str) -> dict[str, str]:
    """The last element of a `Forwarded` header as lower-cased keys -> unquoted values."""
    elements = _ELEMENTS.findall(header)
    if not elements:
        return {}
    pairs: dict[str, str] = {}
    for part in elements[-1].split(";"):
        match = _PAIR.fullmatch(part)
        if match is None:
            continue
        value = match[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs[match[1].lower()] = value
    return pairs


def _last(header: str | None) -> str | None:
    if header is None:
        return None
    value = header.rsplit(",", 1)[-1].strip()
    return value or None


def public_base_url(
    headers: Mapping[str, str], *, scheme: str, peer: str | None, trusted: Iterable[IPNetwork], fallback: str
) -> str:
    """`scheme://host[:port]` of what the client called, else `fallback` (the configured one)."""
    host, proto = headers.get("host"), scheme
    if is_trusted(peer, trusted):
        pairs = forwarded_pairs(headers["forwarded"]) if "forwarded" in headers else {}
        host = pairs.get("host") or _last(headers.get("x-forwarded-host")) or host
        proto = pairs.get("proto") or _last(headers.get("x-forwarded-proto")) or proto
    proto = proto.lower()
    if not host or not valid_host(host) or proto not in SCHEMES:
        return fallback
    return f"{proto}://{host}"
