"""Contract of `imagegate.providers.transport`: the one place upstream failures become our errors."""

from __future__ import annotations

import httpx
import pytest

from imagegate.errors import (
    ImagegateError,
    UpstreamAuthFailed,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.providers.transport import error_for_status, retry_after_seconds, seconds_value, transport_error

REQUEST = httpx.Request("GET", "http://x")


def _all_subclasses(cls: type) -> list[type]:
    out: list[type] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return list(dict.fromkeys(out))


HTTPX_ERRORS = [c for c in _all_subclasses(httpx.HTTPError) if c.__module__.startswith("httpx")]


def _instantiate(cls: type[httpx.HTTPError]) -> httpx.HTTPError:
    """Every httpx error class, built with the arguments it needs."""
    message = f"boom from {cls.__name__}"
    if issubclass(cls, httpx.HTTPStatusError):
        return cls(message, request=REQUEST, response=httpx.Response(500, request=REQUEST))
    try:
        return cls(message, request=REQUEST)
    except TypeError:
        return cls(message)


def test_the_walk_finds_the_httpx_error_tree() -> None:
    names = {c.__name__ for c in HTTPX_ERRORS}
    # A sanity floor: if the walk broke, the parametrized test below would prove nothing.
    for expected in ("ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "ConnectError",
                     "ReadError", "WriteError", "RemoteProtocolError", "LocalProtocolError",
                     "ProxyError", "UnsupportedProtocol", "DecodingError", "TooManyRedirects",
                     "HTTPStatusError", "CloseError"):
        assert expected in names


@pytest.mark.parametrize("cls", HTTPX_ERRORS, ids=lambda c: c.__name__)
def test_transport_error_maps_every_httpx_error_to_a_server_side_error(cls: type[httpx.HTTPError]) -> None:
    exc = _instantiate(cls)
    err = transport_error("someprovider", exc)
    assert isinstance(err, ImagegateError)
    assert err.status_code >= 500
    assert "someprovider" in err.message
    if isinstance(exc, httpx.TimeoutException):
        assert isinstance(err, UpstreamTimeout)
        assert err.status_code == 504
        assert err.code == "upstream_timeout"
    else:
        assert err.status_code != 504


@pytest.mark.parametrize("cls", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
def test_connection_failures_are_unavailable(cls: type[httpx.HTTPError]) -> None:
    err = transport_error("p", _instantiate(cls))
    assert type(err) is UpstreamConnectionError and isinstance(err, UpstreamUnavailable)
    assert err.status_code == 503
    assert err.code == "upstream_connection_error"


def test_the_base_class_itself_maps_too() -> None:
    err = transport_error("p", httpx.HTTPError("generic"))
    assert isinstance(err, UpstreamError)
    assert err.status_code == 502


# status -> (exact class, our HTTP status, code, keeps retry_after)
STATUS_TABLE = {
    400: (UpstreamRejectedRequest, 400, "upstream_rejected_request", False),
    401: (UpstreamAuthFailed, 502, "upstream_auth_failed", False),
    403: (UpstreamAuthFailed, 502, "upstream_auth_failed", False),
    404: (UpstreamError, 502, "upstream_error", False),
    408: (UpstreamTimeout, 504, "upstream_timeout", True),
    422: (UpstreamRejectedRequest, 400, "upstream_rejected_request", False),
    429: (UpstreamRateLimited, 503, "upstream_rate_limited", True),
    500: (UpstreamError, 502, "upstream_error", False),
    502: (UpstreamError, 502, "upstream_error", False),
    503: (UpstreamUnavailable, 503, "upstream_unavailable", True),
    504: (UpstreamTimeout, 504, "upstream_timeout", True),
}


@pytest.mark.parametrize("status", sorted(STATUS_TABLE))
def test_error_for_status_table(status: int) -> None:
    cls, http_status, code, keeps_retry_after = STATUS_TABLE[status]
    err = error_for_status("prov", status, "the upstream message", retry_after=12.0)
    assert type(err) is cls
    assert err.status_code == http_status
    assert err.code == code
    assert "prov" in err.message and str(status) in err.message and "the upstream message" in err.message
    if keeps_retry_after:
        assert err.retry_after == 12.0
        assert err.headers() == {"retry-after": "12"}
    body = err.to_openai_json()["error"]
    assert body["code"] == code and body["message"] == err.message


@pytest.mark.parametrize("status", sorted(STATUS_TABLE))
def test_error_for_status_without_retry_after(status: int) -> None:
    err = error_for_status("prov", status, "m")
    assert err.retry_after is None
    assert err.headers() == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12", 12.0), ("1.5", 1.5), ("0", 0.0), (" 7 ", 7.0),
     ("abc", None), ("-1", None), ("inf", None), ("-inf", None), ("nan", None), ("", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
def test_retry_after_seconds(value: str, expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": value})) == expected


def test_retry_after_seconds_missing_header() -> None:
    assert retry_after_seconds(httpx.Headers({})) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("30s", 30.0), ("1.5", 1.5), (2, 2.0), ("1e999s", None), ("nans", None), ("inf", None), ("-1s", None),
    ("s", None), ("", None), (None, None), (True, None), ({"s": 1}, None), ("9" * 400, None),
])
def test_seconds_value_is_finite_or_none(value: object, expected: float | None) -> None:
    assert seconds_value(value) == expected


@pytest.mark.parametrize("retry_after", [float("inf"), float("nan"), float("-inf")])
def test_non_finite_retry_after_sends_no_header(retry_after: float) -> None:
    assert UpstreamUnavailable("busy", retry_after=retry_after).headers() == {}


def test_huge_retry_after_is_capped() -> None:
    assert UpstreamUnavailable("busy", retry_after=1e300).headers() == {"retry-after": "86400"}
