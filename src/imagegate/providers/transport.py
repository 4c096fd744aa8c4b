"""The one module that talks HTTP to upstreams: adapter = pure transformation, transport = I/O.

An adapter knows its upstream's wire format: how a request becomes a call, and how an answer
(or an error body) becomes images or one of our errors. Everything that touches the network is
here, so retries, deadlines, size caps, cancels and downloads behave the same for every upstream:

- `send` makes one request with a timeout and a streamed size cap, and maps httpx's exceptions to
  ours once (most specific first). `send_checked` also turns a non-2xx answer into the adapter's
  error through its `error` hook. All actual HTTP goes through `_exchange`, the one function to
  change to swap the client library.
- `stream_events` is `send_checked` for an answer that is an event stream (Gemini's
  `streamGenerateContent?alt=sse`): it yields each event's data as it arrives (`SSEDecoder`).
- `error_for_status` is the shared table of upstream statuses to error classes; adapters that
  can read their upstream's error body (policy blocks, error types) call it for the rest.
- `run_job` is the polling job runner for upstreams that work by predictions or queues
  (Replicate, fal, Black Forest Labs): the adapter describes the job, the runner submits, sleeps,
  polls, retries transient poll answers, cancels, and fetches the outputs. See `PollingJob`.
- `download_image` fetches one output (an http(s) URL or a `data:` URI), and `decode_data_uri`
  is the one data-URI decoder, shared with `imagegate.fetch` for user inputs.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import math
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import httpx

from ..errors import (
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
from ..imaging import MIME_BY_FORMAT, ImageBytes, decode_b64_image, sniff_format
from . import aio
from .base import HttpProvider, ProviderImage, ProviderResult


@dataclass(frozen=True)
class UpstreamResponse:
    status_code: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


# --- sending ---------------------------------------------------------------------------------


def transport_error(provider: str, exc: httpx.HTTPError) -> ImagegateError:
    """Map an httpx exception; a test checks that every httpx error class lands somewhere."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{provider} did not answer in time ({type(exc).__name__}).")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return UpstreamConnectionError(f"Could not talk to {provider}: {type(exc).__name__}.")
    return UpstreamError(f"Request to {provider} failed: {type(exc).__name__}: {exc}")


async def _exchange(
    client: httpx.AsyncClient, method: str, url: str, *, timeout: float, max_bytes: int, **kwargs: Any
) -> UpstreamResponse:
    """The only place a request is made. Raises httpx's exceptions, and `_TooLarge` once the body
    passes `max_bytes` (read as a stream, never buffered past the cap). The gateway's own client
    goes over aiohttp (aio.py: a third of httpx's CPU on a 2 MB answer), raising aiohttp's."""
    if (fast := aio.session_for(client)) is not None:
        answer = await fast.exchange(method, url, timeout=timeout, max_bytes=max_bytes, **kwargs)
        if answer is not None:  # None: a call only httpx makes as it always has
            return UpstreamResponse(*answer)
    async with client.stream(method, url, timeout=timeout, **kwargs) as response:
        return UpstreamResponse(response.status_code, response.headers, await _read_capped(response, max_bytes))


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(Exception):
    """A response body over the cap (raised inside `_exchange`, mapped by `send`)."""


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
    """One request with a timeout and a cap on the response size; any status comes back."""
    try:
        return await _exchange(client, method, url, timeout=timeout, max_bytes=max_bytes, **kwargs)
    except (_TooLarge, aio.TooLarge):
        raise UpstreamResponseTooLarge(f"{provider} sent a response larger than {max_bytes} bytes.") from None
    except httpx.HTTPError as exc:
        raise transport_error(provider, exc) from exc
    except aio.ERRORS as exc:
        raise aio.transport_error(provider, exc) from exc
    except (httpx.InvalidURL, UnicodeError) as exc:  # a URL the upstream handed us (poll, download) is garbage
        raise UpstreamBadResponse(f"{provider} sent a URL that cannot be requested.") from exc


ErrorHook = Callable[[UpstreamResponse], ImagegateError]


async def send_checked(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    timeout: float,
    max_bytes: int,
    error: ErrorHook,
    **kwargs: Any,
) -> UpstreamResponse:
    """`send`, returning only a 2xx answer: anything else is raised as `error(response)`, the
    adapter's reading of its upstream's error body."""
    response = await send(client, method, url, provider=provider, timeout=timeout, max_bytes=max_bytes, **kwargs)
    if not response.ok:
        raise error(response)
    return response


# --- streamed answers (Server-Sent Events) ---------------------------------------------------


class SSEDecoder:
    """An event stream, fed as it arrives, into the `data` of each event (WHATWG HTML 9.2.5 and
    9.2.6, "Parsing" and "Interpreting an event stream"): lines end with CRLF, LF or CR; an
    event's data is the values of its `data` fields joined with LF; comments (`:`) and the other
    fields (`event`, `id`, `retry`) are ignored; a blank line ends an event, and so does the end
    of the stream (`end`).

    Built for events of megabytes (a Gemini thought image is one `data:` line of ~8 MB base64 at
    4K): there is no line limit, each chunk is searched once, for line ends only, and an
    unfinished line is kept as views of the chunks it came in, joined once when it ends, which
    is the one copy of a big event's bytes."""

    def __init__(self) -> None:
        self._line: list[memoryview] = []  # the unfinished line, in pieces
        self._data: list[bytes] = []  # the current event's data values
        self._after_cr = False  # the last chunk ended with \r: a \n that opens the next one is part of it

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event that `chunk` completes."""
        events: list[bytes] = []
        view = memoryview(chunk)
        pos = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        self._after_cr = False
        # The next \n and the next \r, each looked for again only once passed: bytes.find is a
        # memchr (GB/s; a regex character class ran at 0.3 GB/s, 80 ms of CPU a 4K stream), and
        # no byte is searched twice for either.
        lf, cr = chunk.find(b"\n", pos), chunk.find(b"\r", pos)
        while lf != -1 or cr != -1:
            end = lf if cr == -1 or (lf != -1 and lf < cr) else cr
            self._line.append(view[pos:end])
            self._end_line(events)
            pos = end + 1
            if end == cr:
                if pos == len(chunk):
                    self._after_cr = True
                elif lf == pos:  # \r\n: one line end
                    pos += 1
                cr = chunk.find(b"\r", pos)
            if lf != -1 and lf < pos:
                lf = chunk.find(b"\n", pos)
        if pos < len(chunk):
            self._line.append(view[pos:])
        return events

    def end(self) -> list[bytes]:
        """The data of the last event, when the stream ended without a blank line after it."""
        events: list[bytes] = []
        if self._line:
            self._end_line(events)
        self._end_line(events)  # as a blank line would
        return events

    def _end_line(self, events: list[bytes]) -> None:
        pieces, self._line = self._line, []
        head = _head(pieces, 6)
        if not head:  # a blank line: the event is complete
            if self._data:
                events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                self._data = []
        elif head.startswith(b"data:"):
            self._data.append(_joined(pieces, 6 if head[5:6] == b" " else 5))  # one leading space is not data
        elif head == b"data":  # a field without a colon has an empty value
            self._data.append(b"")


def _head(pieces: list[memoryview], size: int) -> bytes:
    """The first `size` bytes of a line held in pieces."""
    head = b""
    for piece in pieces:
        if len(head) >= size:
            break
        head += piece[: size - len(head)]
    return head


def _joined(pieces: list[memoryview], skip: int) -> bytes:
    """The line's bytes after its first `skip`, copied once."""
    rest: list[memoryview] = []
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        rest.append(piece[skip:])
        skip = 0
    return b"".join(rest)


async def stream_events(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    timeout: float,
    max_bytes: int,
    error: ErrorHook,
    json_whole: bool = False,
    **kwargs: Any,
) -> AsyncGenerator[bytes, None]:
    """One request whose 2xx answer is an event stream: the `data` of each event, as it arrives
    (see `SSEDecoder`). `send_checked`'s contract otherwise: a non-2xx answer is read (capped) and
    raised as `error(response)`; `max_bytes` caps the whole stream (`UpstreamResponseTooLarge`);
    httpx's failures map through `transport_error` (`timeout` bounds each read, as for `send`).
    With `json_whole`, a 2xx answer that says it is JSON rather than an event stream is yielded
    whole, as one event: an upstream or proxy that answered the streamed call unstreamed.

    Always httpx, never aio.py's aiohttp: that path buffers a whole answer, which is what makes it
    cheap, and a stream must hand over each event as it comes. Close it with `contextlib.aclosing`
    when leaving early, so the connection is not left open until the generator is collected."""
    try:
        async with client.stream(method, url, timeout=timeout, **kwargs) as response:
            if not 200 <= response.status_code < 300:
                body = await _read_capped(response, max_bytes)
                raise error(UpstreamResponse(response.status_code, response.headers, body))
            if json_whole and _is_json(response.headers):
                yield await _read_capped(response, max_bytes)
                return
            decoder = SSEDecoder()
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise _TooLarge
                events = decoder.feed(chunk)
                while events:  # popped, not iterated: no reference to a yielded event stays here
                    yield events.pop(0)
            events = decoder.end()
            while events:
                yield events.pop(0)
    except _TooLarge:
        raise UpstreamResponseTooLarge(f"{provider} sent a response larger than {max_bytes} bytes.") from None
    except httpx.HTTPError as exc:
        raise transport_error(provider, exc) from exc
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise UpstreamBadResponse(f"{provider} sent a URL that cannot be requested.") from exc


def _is_json(headers: httpx.Headers) -> bool:
    media_type: str = headers.get("content-type", "")
    return media_type.split(";", 1)[0].strip().lower() == "application/json"


# --- reading answers -------------------------------------------------------------------------


def parse_json(provider: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise UpstreamBadResponse(f"{provider} sent a response that is not valid JSON.") from exc


def json_or_none(body: bytes) -> Any:
    """An error body's JSON, or None when it is not JSON (an HTML error page from a proxy)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


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


def error_for_status(provider: str, status: int, message: str, *, retry_after: float | None = None) -> ImagegateError:
    """An upstream's HTTP error as ours. The client can fix a 400/422 (bad input), so it stays a
    400; the client cannot fix our upstream key or a missing upstream model, so those are 502."""
    text = f"{provider} returned HTTP {status}: {message}"
    error = _error_for_status(text, status, retry_after)
    error.upstream_status = status
    return error


def _error_for_status(text: str, status: int, retry_after: float | None) -> ImagegateError:
    if status in (400, 422):
        return UpstreamRejectedRequest(text)
    if status in (401, 403):
        return UpstreamAuthFailed(text)
    if status in (408, 504):
        return UpstreamTimeout(text, retry_after=retry_after)
    if status == 429:
        return UpstreamRateLimited(text, retry_after=retry_after)
    if status == 503:
        return UpstreamUnavailable(text, retry_after=retry_after)
    return UpstreamError(text)


# --- data URIs and downloads -----------------------------------------------------------------


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a `data:` URI (base64 or percent-encoded); ValueError when it is malformed.
    The one decoder for user inputs (`imagegate.fetch`) and upstream outputs alike."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.startswith("data:"):
        raise ValueError("is not a valid data URI")
    if not header.endswith(";base64"):
        return urllib.parse.unquote_to_bytes(payload)
    try:
        # strict_mode validates in C; b64decode(validate=True) runs a regex over megabytes first.
        return binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError("data URI has invalid base64") from exc


def data_uri_image(uri: str, *, provider: str) -> ProviderImage:
    """An output sent as a `data:` URI, trusted by its bytes, not its declared type. Base64 stays
    base64 (checked from its head), so a b64_json answer reuses it without a decode and encode."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.startswith("data:"):
        raise UpstreamBadResponse(f"{provider} sent a malformed data: URI.")
    if header.endswith(";base64"):
        try:
            blob, fmt = decode_b64_image(payload)
        except ValueError as exc:
            raise UpstreamBadResponse(f"{provider} sent a data: URI output that is {exc}.") from exc
        return ProviderImage(blob, MIME_BY_FORMAT[fmt])
    return image_from_bytes(urllib.parse.unquote_to_bytes(payload), provider=provider)


def image_from_bytes(data: bytes, *, provider: str) -> ProviderImage:
    fmt = sniff_format(data)
    if fmt is None:
        raise UpstreamBadResponse(f"{provider} sent an output that is not an image.")
    return ProviderImage(ImageBytes(data), MIME_BY_FORMAT[fmt])


async def download_image(
    client: httpx.AsyncClient,
    uri: str,
    *,
    provider: str,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
) -> ProviderImage:
    """One output image: an http(s) URL (downloaded under the size cap) or a `data:` URI. The
    upstream is the operator's choice, so its output URLs are trusted like it is; output files are
    public, so no key is sent unless `headers` says so."""
    if uri.startswith("data:"):
        return data_uri_image(uri, provider=provider)
    if not uri.startswith(("http://", "https://")):
        raise UpstreamBadResponse(f"{provider} sent an output URL that is neither http(s) nor a data URI.")
    response = await send(
        client, "GET", uri, provider=provider, timeout=timeout, max_bytes=max_bytes, headers=dict(headers or {})
    )
    if response.status_code != 200:
        raise UpstreamError(f"Downloading the {provider} output gave HTTP {response.status_code}.")
    return image_from_bytes(response.body, provider=provider)


# --- the polling job runner ------------------------------------------------------------------

# Poll answers worth another poll: the job runs on (and is billed) regardless of one failed GET.
# The union of what replicate-python (429, 503, 504: its RetryTransport) and fal_client (408,
# 409, 429 and the ingress' 502, 503, 504) retry; a dropped connection is retried too.
POLL_RETRY_STATUSES = frozenset({408, 409, 429, 502, 503, 504})
# Transient poll failures in a row before the last one is the answer (fal_client's limit too).
MAX_POLL_FAILURES = 5
# A cancel is sent after our deadline has passed: it gets a little time of its own, no more.
CANCEL_TIMEOUT_S = 2.0
CANCEL_MAX_BYTES = 64 * 1024
# A job that succeeded is paid for: its downloads are not cut off by a deadline with only a few
# milliseconds left (the request's own deadline, in dispatch, still bounds them).
MIN_DOWNLOAD_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Call:
    """One HTTP request as data: what an adapter asks the transport to send."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    params: Mapping[str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": dict(self.headers)}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.params is not None:
            kwargs["params"] = dict(self.params)
        return kwargs


@dataclass(frozen=True)
class JobStatus:
    """What one upstream answer says about a job. The runner keeps the last `poll`, `cancel` and
    `result` it was given, so an answer that does not repeat them (fal's status) leaves them be."""

    state: Literal["pending", "done", "failed"]
    poll: Call | None = None  # where to ask next
    cancel: Call | None = None  # how to stop the job; None: the upstream cannot be told
    result: Call | None = None  # done without `outputs`: where they are listed (given to `PollingJob.result`)
    outputs: tuple[str, ...] = ()  # done: the output URIs, https or data:
    text: str | None = None  # done: text the upstream sent with the images
    error: ImagegateError | None = None  # failed: the job's own failure, raised as it is
    job_id: str | None = None  # for messages

    @classmethod
    def done(cls, outputs: tuple[str, ...] | list[str], text: str | None = None) -> JobStatus:
        return cls("done", outputs=tuple(outputs), text=text)

    @classmethod
    def failed(cls, error: ImagegateError) -> JobStatus:
        return cls("failed", error=error)


class PollingJob(ABC):
    """One upstream job as its adapter describes it: pure functions from answers to statuses; the
    runner does all the I/O. Make one per request (it may hold the request and the key).

    Example, an upstream that answers a submit with `{"id", "polling_url"}` and a poll with
    `{"status": "Pending" | "Ready" | "Error", "result": {"sample": url}}`:

        @dataclass(frozen=True)
        class FluxJob(PollingJob):
            provider = "bfl"
            url: str
            body: dict[str, Any]
            key: str

            def submit(self, remaining: float) -> Call:
                return Call("POST", self.url, {"x-key": self.key}, json=self.body)

            def submitted(self, response: UpstreamResponse) -> JobStatus:
                data = parse_json(self.provider, response.body)
                return JobStatus("pending", poll=Call("GET", data["polling_url"], {"x-key": self.key}))

            def polled(self, response: UpstreamResponse) -> JobStatus:
                data = parse_json(self.provider, response.body)
                if data["status"] == "Ready":
                    return JobStatus.done([data["result"]["sample"]])
                if data["status"] == "Error":
                    return JobStatus.failed(UpstreamError("bfl failed the request."))
                return JobStatus("pending")

            def error(self, response: UpstreamResponse) -> ImagegateError:
                return error_for_status(self.provider, response.status_code, "...")

        result = await run_job(FluxJob(...), client=client, timeout=300, max_bytes=cap, interval=0.5)

    Every method may raise an imagegate error (a garbled answer is `UpstreamBadResponse`); raised
    while the job is pending, it cancels the job like a passed deadline does.
    """

    provider: str

    @abstractmethod
    def submit(self, remaining: float) -> Call:
        """The call that creates the job; `remaining` is the deadline's seconds left (for hints such
        as Replicate's `Prefer: wait` or fal's `x-fal-request-timeout`)."""

    @abstractmethod
    def submitted(self, response: UpstreamResponse) -> JobStatus:
        """The job from its 2xx submit answer; a pending one must name where to poll."""

    @abstractmethod
    def polled(self, response: UpstreamResponse) -> JobStatus:
        """The job from a 2xx poll answer."""

    @abstractmethod
    def error(self, response: UpstreamResponse) -> ImagegateError:
        """A non-2xx answer from any of the job's calls, as our error (see `error_for_status`)."""

    def result(self, response: UpstreamResponse) -> JobStatus:
        """The outputs from the 2xx answer to a done status' `result` call (fal's response_url)."""
        raise NotImplementedError(f"{type(self).__name__} gave a result call but does not read its answer")


# Cancels sent because the caller went away: referenced here until done, so none is garbage collected.
_background_cancels: set[asyncio.Task[None]] = set()


async def drain_cancels() -> None:
    """Wait for the cancels still being sent in the background (tests, shutdown)."""
    while _background_cancels:
        await asyncio.gather(*_background_cancels, return_exceptions=True)


@dataclass(frozen=True)
class _Link:
    """What every call of one job shares."""

    client: httpx.AsyncClient
    provider: str
    timeout: float
    max_bytes: int
    started: float = field(default_factory=time.monotonic)

    def remaining(self, status: JobStatus | None = None) -> float:
        left = self.started + self.timeout - time.monotonic()
        if left <= 0:
            where = f" (job {status.job_id} still {status.state})" if status and status.job_id else ""
            raise UpstreamTimeout(f"{self.provider} did not finish within {self.timeout:g} s{where}.")
        return left

    async def send(self, call: Call, timeout: float, max_bytes: int | None = None) -> UpstreamResponse:
        return await send(
            self.client,
            call.method,
            call.url,
            provider=self.provider,
            timeout=timeout,
            max_bytes=self.max_bytes if max_bytes is None else max_bytes,
            **call.kwargs(),
        )

    async def checked(self, call: Call, job: PollingJob, status: JobStatus | None = None) -> UpstreamResponse:
        response = await self.send(call, self.remaining(status))
        if not response.ok:
            raise job.error(response)
        return response


async def run_job(
    job: PollingJob, *, client: httpx.AsyncClient, timeout: float, max_bytes: int, interval: float
) -> ProviderResult:
    """Submit `job`, poll it every `interval` seconds until it is done, and download its outputs,
    all within `timeout` (then `UpstreamTimeout`, 504).

    A pending job is cancelled (best effort) when the deadline passes, when polling fails for
    good, or when the caller goes away (asyncio cancellation: the cancel is sent from a background
    task), so the upstream does not keep working on, and billing for, an answer nobody waits for.
    Transient poll answers (`POLL_RETRY_STATUSES`, a dropped connection) are retried up to
    `MAX_POLL_FAILURES` times in a row, waiting at least the upstream's Retry-After.
    """
    link = _Link(client, job.provider, timeout, max_bytes)
    # 1. Submit: a failure here leaves no job behind to cancel.
    status = job.submitted(await link.checked(job.submit(link.remaining()), job))
    # 2. Wait until it is over, cancelling it if we stop waiting first.
    if status.state == "pending":
        status = await _watch(job, link, status, interval)
    if status.state == "failed":
        assert status.error is not None, "a failed JobStatus carries its error"
        raise status.error
    # 3. The outputs: listed elsewhere (fal), then downloaded.
    if not status.outputs and status.result is not None:
        status = job.result(await link.checked(status.result, job))
    if not status.outputs:
        raise UpstreamBadResponse(f"{job.provider} finished a job without outputs.")
    images = await _all_or_none([_download(link, uri) for uri in status.outputs])
    if status.text is not None:
        images = [replace(image, revised_prompt=status.text) for image in images]
    return ProviderResult(images=images, text=status.text)


class PollingProvider(HttpProvider):
    """An upstream that works by jobs (Replicate, fal, BFL): each call is a `PollingJob` run by
    `run_job` with this provider's client, timeout, size cap and poll interval."""

    # Seconds between polls of an unfinished job; IMAGEGATE_POLL_INTERVAL_SECONDS or tests change it.
    poll_interval: float = 1.0

    async def run_polling(self, job: PollingJob) -> ProviderResult:
        return await run_job(
            job,
            client=self.client,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            interval=self.poll_interval,
        )


async def _watch(job: PollingJob, link: _Link, status: JobStatus, interval: float) -> JobStatus:
    tracked = status
    try:
        while status.state == "pending":
            status = await _poll(job, link, tracked, interval)
            tracked = replace(
                status,
                poll=status.poll or tracked.poll,
                cancel=status.cancel or tracked.cancel,
                result=status.result or tracked.result,
                job_id=status.job_id or tracked.job_id,
            )
        return tracked
    except ImagegateError:
        await _cancel(link, tracked.cancel)  # timed out or lost track of it: stop paying for it
        raise
    except asyncio.CancelledError:
        # The caller gave up (client disconnected): stop the upstream too, without waiting for it.
        if tracked.cancel is not None:
            task = asyncio.get_running_loop().create_task(_cancel(link, tracked.cancel))
            _background_cancels.add(task)
            task.add_done_callback(_background_cancels.discard)
        raise


async def _poll(job: PollingJob, link: _Link, status: JobStatus, interval: float) -> JobStatus:
    """The job's next status, after `interval` (the answer just read said "not yet"), retrying
    transient failures. The deadline is checked before each poll and bounds each one."""
    if status.poll is None:
        raise UpstreamBadResponse(f"{job.provider} sent an unfinished job with nowhere to poll it.")
    delay, failures = interval, 0
    while True:
        await asyncio.sleep(min(delay, link.remaining(status)))
        try:
            response = await link.send(status.poll, link.remaining(status))
        except UpstreamConnectionError as exc:
            error: ImagegateError = exc
        else:
            if response.ok:
                return job.polled(response)
            error = job.error(response)
            if response.status_code not in POLL_RETRY_STATUSES:
                raise error
        failures += 1
        if failures >= MAX_POLL_FAILURES:
            raise error
        delay = max(interval, error.retry_after or 0.0)


async def _cancel(link: _Link, call: Call | None) -> None:
    """Best effort: a failed cancel must never hide the error that made us send it."""
    if call is None:
        return
    try:
        await link.send(call, CANCEL_TIMEOUT_S, CANCEL_MAX_BYTES)
    except ImagegateError:
        pass


async def _download(link: _Link, uri: str) -> ProviderImage:
    left = link.started + link.timeout - time.monotonic()
    return await download_image(
        link.client, uri, provider=link.provider, max_bytes=link.max_bytes, timeout=max(left, MIN_DOWNLOAD_TIMEOUT_S)
    )


async def _all_or_none(downloads: list[Coroutine[Any, Any, ProviderImage]]) -> list[ProviderImage]:
    """Every output, or the first failure with the other downloads cancelled."""
    tasks = [asyncio.ensure_future(download) for download in downloads]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
