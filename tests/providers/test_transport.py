"""Contract of `imagegate.providers.transport`: the one place upstream failures become our errors."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from imagegate.errors import (
    ImagegateError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.providers import ProviderResult, transport
from imagegate.providers.transport import (
    MAX_POLL_FAILURES,
    POLL_RETRY_STATUSES,
    Call,
    JobStatus,
    PollingJob,
    UpstreamResponse,
    decode_data_uri,
    download_image,
    error_for_status,
    parse_json,
    retry_after_seconds,
    run_job,
    seconds_value,
    send_checked,
    transport_error,
)
from tests.fakes.images import pixel_at, solid_jpeg, solid_png
from tests.fakes.server import LoopbackServer

PNG = solid_png(2, 2)

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
    for expected in (
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "ConnectError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "LocalProtocolError",
        "ProxyError",
        "UnsupportedProtocol",
        "DecodingError",
        "TooManyRedirects",
        "HTTPStatusError",
        "CloseError",
    ):
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
    [
        ("12", 12.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("abc", None),
        ("-1", None),
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_seconds(value: str, expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": value})) == expected


def test_retry_after_seconds_missing_header() -> None:
    assert retry_after_seconds(httpx.Headers({})) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30s", 30.0),
        ("1.5", 1.5),
        (2, 2.0),
        ("1e999s", None),
        ("nans", None),
        ("inf", None),
        ("-1s", None),
        ("s", None),
        ("", None),
        (None, None),
        (True, None),
        ({"s": 1}, None),
        ("9" * 400, None),
    ],
)
def test_seconds_value_is_finite_or_none(value: object, expected: float | None) -> None:
    assert seconds_value(value) == expected


@pytest.mark.parametrize("retry_after", [float("inf"), float("nan"), float("-inf")])
def test_non_finite_retry_after_sends_no_header(retry_after: float) -> None:
    assert UpstreamUnavailable("busy", retry_after=retry_after).headers() == {}


def test_huge_retry_after_is_capped() -> None:
    assert UpstreamUnavailable("busy", retry_after=1e300).headers() == {"retry-after": "86400"}


# --- the polling job runner, against a loopback upstream that works by jobs -------------------


@dataclass(frozen=True)
class Answer:
    """A poll answer: HTTP `status` with a JSON `body` (and headers)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


PENDING = Answer(200, {"state": "pending"})
FAILED = Answer(200, {"state": "failed", "message": "the model fell over"})
DROP = "drop"  # the connection is closed halfway through the answer


def transient(status: int, retry_after: str | None = None) -> Answer:
    return Answer(status, {"message": "try again"}, {"retry-after": retry_after} if retry_after else {})


class JobHost:
    """A raw ASGI upstream with the shape every prediction / queue API shares: `POST /jobs`
    creates job 1 and names its poll URL, `GET /jobs/1` answers from `script` (then `then`),
    `PUT /jobs/1/cancel` cancels it, `GET /files/<name>` serves `files`."""

    def __init__(self) -> None:
        self.url = ""
        self.script: collections.deque[Answer | str] = collections.deque()
        self.then: Answer | str = PENDING
        self.files: dict[str, bytes] = {"out.png": solid_png(8, 8, (10, 200, 30))}
        self.log: list[tuple[str, str]] = []

    def done(self, *outputs: str, text: str | None = None) -> Answer:
        return Answer(200, {"state": "done", "outputs": list(outputs) or [f"{self.url}/files/out.png"], "text": text})

    def count(self, method: str, path: str) -> int:
        return self.log.count((method, path))

    @property
    def polls(self) -> int:
        return self.count("GET", "/jobs/1")

    @property
    def cancels(self) -> int:
        return self.count("PUT", "/jobs/1/cancel")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method, path = scope["method"], scope["path"]
        self.log.append((method, path))
        if (method, path) == ("POST", "/jobs"):
            step: Answer | str = Answer(202, {"id": "1", "poll": f"{self.url}/jobs/1"})
        elif (method, path) == ("GET", "/jobs/1"):
            step = self.script.popleft() if self.script else self.then
        elif (method, path) == ("PUT", "/jobs/1/cancel"):
            step = Answer(200, {"state": "canceled"})
        elif method == "GET" and path.removeprefix("/files/") in self.files:
            data = self.files[path.removeprefix("/files/")]
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
            await send({"type": "http.response.body", "body": data})
            return
        else:
            step = Answer(404, {"message": "no such thing"})
        if step == DROP:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
            await send({"type": "http.response.body", "body": b'{"sta'})  # h11 then closes the connection
            return
        assert isinstance(step, Answer)
        headers = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in step.headers.items())]
        await send({"type": "http.response.start", "status": step.status, "headers": headers})
        body = step.body if isinstance(step.body, bytes) else json.dumps(step.body).encode()
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class ToyJob(PollingJob):
    """The adapter half for JobHost: pure functions from its answers to statuses."""

    provider = "toy"
    base_url: str

    def submit(self, remaining: float) -> Call:
        return Call("POST", f"{self.base_url}/jobs", {"x-key": "k"}, json={"prompt": "p"})

    def submitted(self, response: UpstreamResponse) -> JobStatus:
        data = parse_json(self.provider, response.body)
        return JobStatus(
            "pending",
            poll=Call("GET", data["poll"], {"x-key": "k"}),
            cancel=Call("PUT", f"{self.base_url}/jobs/{data['id']}/cancel", {"x-key": "k"}),
            job_id=data["id"],
        )

    def polled(self, response: UpstreamResponse) -> JobStatus:
        data = parse_json(self.provider, response.body)
        if data["state"] == "done":
            return JobStatus.done(data["outputs"], data.get("text"))
        if data["state"] == "failed":
            return JobStatus.failed(UpstreamError(f"toy: {data['message']}", code="toy_failed"))
        return JobStatus("pending")

    def error(self, response: UpstreamResponse) -> ImagegateError:
        return error_for_status(
            self.provider, response.status_code, "poll failed", retry_after=retry_after_seconds(response.headers)
        )


@pytest.fixture
def host() -> Iterator[JobHost]:
    app = JobHost()
    with LoopbackServer(app) as server:
        app.url = server.url
        yield app


async def run_toy(
    host: JobHost, http: httpx.AsyncClient, *, timeout: float = 10.0, max_bytes: int = 1 << 20
) -> ProviderResult:
    return await run_job(ToyJob(host.url), client=http, timeout=timeout, max_bytes=max_bytes, interval=0.01)


async def test_pending_then_done_downloads_every_output(host: JobHost, http: httpx.AsyncClient) -> None:
    inline = "data:image/png;base64," + base64.b64encode(solid_png(4, 4)).decode()
    host.script.extend([PENDING, PENDING, host.done(f"{host.url}/files/out.png", inline, text="a green square")])
    result = await run_toy(host, http)
    assert [image.mime_type for image in result.images] == ["image/png", "image/png"]
    assert pixel_at(result.images[0].data)[:3] == (10, 200, 30)
    assert result.text == "a green square" and result.images[1].revised_prompt == "a green square"
    assert host.log == [("POST", "/jobs"), *[("GET", "/jobs/1")] * 3, ("GET", "/files/out.png")]


async def test_a_failed_job_raises_its_own_error_and_is_not_cancelled(host: JobHost, http: httpx.AsyncClient) -> None:
    host.script.extend([PENDING, FAILED])
    with pytest.raises(UpstreamError) as info:
        await run_toy(host, http)
    assert info.value.code == "toy_failed" and "fell over" in info.value.message
    assert host.cancels == 0  # it is over: nothing to stop


async def test_the_deadline_cancels_the_job(host: JobHost, http: httpx.AsyncClient) -> None:
    with pytest.raises(UpstreamTimeout) as info:
        await run_toy(host, http, timeout=0.3)
    assert "toy did not finish within 0.3 s (job 1 still pending)" in info.value.message
    assert host.polls > 1 and host.cancels == 1


async def test_caller_cancellation_cancels_the_job_in_the_background(host: JobHost, http: httpx.AsyncClient) -> None:
    task = asyncio.create_task(run_toy(host, http))
    while host.polls == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(transport.drain_cancels(), 5)
    assert host.cancels == 1


@pytest.mark.parametrize(
    "answer",
    [*(transient(s) for s in sorted(POLL_RETRY_STATUSES)), DROP],
    ids=[*(str(s) for s in sorted(POLL_RETRY_STATUSES)), "dropped-connection"],
)
async def test_transient_poll_answers_are_retried(host: JobHost, http: httpx.AsyncClient, answer: Answer | str) -> None:
    host.script.extend([answer, answer, host.done()])
    result = await run_toy(host, http)
    assert len(result.images) == 1
    assert host.polls == 3 and host.cancels == 0


async def test_a_poll_waits_for_the_upstreams_retry_after(host: JobHost, http: httpx.AsyncClient) -> None:
    """Retry-After 30 within a 1 s deadline: honoured, the deadline passes before a second poll
    (at the 0.01 s interval the next poll would have found the job done)."""
    host.script.extend([transient(429, retry_after="30"), host.done()])
    with pytest.raises(UpstreamTimeout):
        await run_toy(host, http, timeout=1.0)
    assert host.polls == 1 and host.cancels == 1


async def test_transient_failures_in_a_row_give_up_after_the_limit(host: JobHost, http: httpx.AsyncClient) -> None:
    host.then = transient(503)
    with pytest.raises(UpstreamUnavailable) as info:
        await run_toy(host, http)
    assert info.value.code == "upstream_unavailable"
    assert host.polls == MAX_POLL_FAILURES and host.cancels == 1


async def test_a_good_answer_resets_the_failure_count(host: JobHost, http: httpx.AsyncClient) -> None:
    flaky = [transient(502)] * (MAX_POLL_FAILURES - 1)
    host.script.extend([*flaky, PENDING, *flaky, host.done()])
    assert len((await run_toy(host, http)).images) == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(500, {"message": "boom"}), UpstreamError),
        (Answer(401, {"message": "who are you"}), UpstreamAuthFailed),
        (Answer(200, b"<html>not json</html>"), UpstreamBadResponse),
    ],
    ids=["500", "401", "garbled"],
)
async def test_a_final_poll_failure_cancels_the_job(
    host: JobHost, http: httpx.AsyncClient, answer: Answer, error: type[ImagegateError]
) -> None:
    host.script.append(answer)
    with pytest.raises(ImagegateError) as info:
        await run_toy(host, http)
    assert type(info.value) is error
    assert host.polls == 1 and host.cancels == 1


async def test_a_download_over_the_cap_is_too_large(host: JobHost, http: httpx.AsyncClient) -> None:
    host.files["big.png"] = solid_png(8, 8) + bytes(64 * 1024)
    host.script.append(host.done(f"{host.url}/files/big.png"))
    with pytest.raises(UpstreamResponseTooLarge):
        await run_toy(host, http, max_bytes=32 * 1024)  # the JSON answers fit, the file does not


async def test_a_download_that_is_not_an_image_is_a_bad_response(host: JobHost, http: httpx.AsyncClient) -> None:
    host.files["page.png"] = b"<html>a CDN error page</html>"
    host.script.append(host.done(f"{host.url}/files/page.png"))
    with pytest.raises(UpstreamBadResponse):
        await run_toy(host, http)


async def test_a_missing_download_is_a_502(host: JobHost, http: httpx.AsyncClient) -> None:
    host.script.append(host.done(f"{host.url}/files/gone.png"))
    with pytest.raises(UpstreamError) as info:
        await run_toy(host, http)
    assert type(info.value) is UpstreamError and "gave HTTP 404" in info.value.message


async def test_every_call_goes_through_exchange(monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient) -> None:
    """The one seam for swapping the client library: with `_exchange` replaced, a whole job runs
    with no socket at all (the base URL points nowhere)."""
    calls: list[tuple[str, str]] = []
    answers = {
        "POST": {"id": "7", "poll": "http://nowhere.invalid/jobs/7"},
        "GET": {"state": "done", "outputs": ["data:image/png;base64," + base64.b64encode(PNG).decode()]},
    }

    async def exchange(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> UpstreamResponse:
        calls.append((method, url))
        return UpstreamResponse(200, httpx.Headers(), json.dumps(answers[method]).encode())

    monkeypatch.setattr(transport, "_exchange", exchange)
    result = await run_job(ToyJob("http://nowhere.invalid"), client=http, timeout=5, max_bytes=1 << 20, interval=0.01)
    assert len(result.images) == 1
    assert calls == [("POST", "http://nowhere.invalid/jobs"), ("GET", "http://nowhere.invalid/jobs/7")]


# --- send_checked, downloads and data URIs ----------------------------------------------------


async def test_send_checked_returns_2xx_and_raises_the_hook_error(host: JobHost, http: httpx.AsyncClient) -> None:
    def hook(response: UpstreamResponse) -> ImagegateError:
        return UpstreamAuthFailed(f"hook saw {response.status_code}")

    kwargs: dict[str, Any] = {"provider": "toy", "timeout": 5, "max_bytes": 1 << 20, "error": hook}
    ok = await send_checked(http, "POST", f"{host.url}/jobs", **kwargs)
    assert ok.status_code == 202 and json.loads(ok.body)["id"] == "1"
    with pytest.raises(UpstreamAuthFailed, match="hook saw 404"):
        await send_checked(http, "GET", f"{host.url}/nothing", **kwargs)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("data:image/png;base64," + base64.b64encode(b"\x89PNG").decode(), b"\x89PNG"),
        ("data:text/plain,a%20b", b"a b"),
        ("data:,", b""),
    ],
)
def test_decode_data_uri(uri: str, expected: bytes) -> None:
    assert decode_data_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64",
        "image/png;base64,AAAA",
        "data:image/png;base64,!!!",
        "data:image/png;base64,QQ",
        "data:image/png;base64,QQ==\nQQ==",
    ],
)
def test_decode_data_uri_refuses_malformed(uri: str) -> None:
    with pytest.raises(ValueError):
        decode_data_uri(uri)


async def test_download_image_takes_data_uris_by_their_bytes(http: httpx.AsyncClient) -> None:
    jpeg = solid_jpeg(4, 4)
    declared_png = "data:image/png;base64," + base64.b64encode(jpeg).decode()
    image = await download_image(http, declared_png, provider="toy", timeout=1, max_bytes=1 << 20)
    assert image.mime_type == "image/jpeg" and image.data == jpeg
    assert image.blob.b64 == declared_png.partition(",")[2]  # kept as base64: no decode and encode
    percent = "data:image/png," + urllib.parse.quote_from_bytes(PNG)
    assert (await download_image(http, percent, provider="toy", timeout=1, max_bytes=1 << 20)).data == PNG


@pytest.mark.parametrize("uri", ["ftp://example.com/x.png", "data:image/png;base64,aGVsbG8=", "data:image/png"])
async def test_download_image_refuses_what_is_not_an_image_url(http: httpx.AsyncClient, uri: str) -> None:
    with pytest.raises(UpstreamBadResponse):
        await download_image(http, uri, provider="toy", timeout=1, max_bytes=1 << 20)
