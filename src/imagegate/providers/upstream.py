"""HTTP to upstreams, and the one place where their failures become imagegate errors.

Transport exceptions are translated most specific first; HTTP statuses by `error_for_status`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import (
    ImagegateError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from . import aio


@dataclass(frozen=True)
class UpstreamResponse:
    status_code: int
    headers: httpx.Headers
    body: bytes


def transport_error(provider: str, exc: httpx.HTTPError) -> ImagegateError:
    """Map an httpx exception; a test checks that every httpx error class lands somewhere."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{provider} did not answer in time ({type(exc).__name__}).")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return UpstreamUnavailable(f"Could not talk to {provider}: {type(exc).__name__}.",
                                   code="upstream_connection_error")
    return UpstreamError(f"Request to {provider} failed: {type(exc).__name__}: {exc}")


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    timeout: float,
    max_bytes: int,
    **kwargs: Any,
) -> UpstreamResponse:
    """One request with a timeout and a cap on the response size (streamed, never buffered past it)."""
    if (fast := aio.session_for(client)) is not None:  # the gateway's client: aiohttp, see aio.py
        answer = await fast.exchange(method, url, provider=provider, timeout=timeout, max_bytes=max_bytes, **kwargs)
        if answer is not None:
            return UpstreamResponse(*answer)
    try:
        async with client.stream(method, url, timeout=timeout, **kwargs) as response:
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise UpstreamError(f"{provider} sent a response larger than {max_bytes} bytes.",
                                        code="upstream_response_too_large")
                chunks.append(chunk)
            return UpstreamResponse(response.status_code, response.headers, b"".join(chunks))
    except httpx.HTTPError as exc:
        raise transport_error(provider, exc) from exc
    except (httpx.InvalidURL, UnicodeError) as exc:  # a URL the upstream handed us (poll, download) is garbage
        raise UpstreamError(f"{provider} sent a URL that cannot be requested.", code="upstream_bad_response") from exc


def parse_json(provider: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise UpstreamError(f"{provider} sent a response that is not valid JSON.",
                            code="upstream_bad_response") from exc


def upstream_text(value: Any, limit: int = 500) -> str:
    """Text for an error message from whatever an upstream put in a message field: a string as it
    is, anything else as (bounded) JSON, never an exception of its own (deep nesting, odd types)."""
    if isinstance(value, str):
        return value[:limit]
    try:
        return json.dumps(value)[:limit]
    except (ValueError, TypeError, RecursionError):
        return "(unreadable)"


def seconds_value(value: Any) -> float | None:
    """A delay an upstream gave (a number, or a string such as "30" or Google's "30s"), or None
    when it is missing, garbled, negative or not finite (1e999, nan): never worth a 500 or a sleep."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = value.strip().removesuffix("s") if isinstance(value, str) else value
    try:
        seconds = float(text)
    except (ValueError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None or value.strip().endswith("s"):
        return None
    return seconds_value(value)


def error_for_status(
    provider: str, status: int, message: str, *, retry_after: float | None = None
) -> ImagegateError:
    """An upstream's HTTP error as ours. The client can fix a 400/422 (bad input), so it stays a
    400; the client cannot fix our upstream key or a missing upstream model, so those are 502."""
    text = f"{provider} returned HTTP {status}: {message}"
    error = _error_for_status(text, status, retry_after)
    error.upstream_status = status
    return error


def _error_for_status(text: str, status: int, retry_after: float | None) -> ImagegateError:
    if status in (400, 422):
        return InvalidRequest(text, code="upstream_rejected_request")
    if status in (401, 403):
        return UpstreamError(text, code="upstream_auth_failed")
    if status in (408, 504):
        return UpstreamTimeout(text, retry_after=retry_after)
    if status == 429:
        return UpstreamUnavailable(text, code="upstream_rate_limited", retry_after=retry_after)
    if status == 503:
        return UpstreamUnavailable(text, retry_after=retry_after)
    return UpstreamError(text)
