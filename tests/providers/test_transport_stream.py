"""Contract of `transport.stream_events` and its `SSEDecoder`: event streams of any size, as they arrive.

The decoder is checked against the event-stream rules (WHATWG HTML 9.2.5-9.2.6: the three line
ends, comments, other fields, multi-line data, one leading space, the end of the stream) with the
stream cut at every byte; the call over real loopback HTTP, with a raw ASGI upstream that sends
exactly the bytes a test scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from imagegate.errors import (
    ImagegateError,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)
from imagegate.providers.transport import SSEDecoder, UpstreamResponse, error_for_status, stream_events
from tests.fakes.server import LoopbackServer

# --- the decoder -----------------------------------------------------------------------------

STREAM = (
    ": a comment, ignored\n"
    "event: message\n"
    "id: 7\n"
    "retry: 1000\n"
    "data: first\n"
    "\n"
    "data:no space\n"
    "data:  two spaces\n"
    "data\n"
    "data: last line\n"
    "\n"
    "\n"  # a blank line with no data: no event
    "event: ping\n"
    "\n"  # a field but no data: no event
    "data:\n"
    "\n"  # one empty data line: an event with empty data
    "data: unterminated"  # the end of the stream ends the last event
)
EVENTS = [b"first", b"no space\n two spaces\n\nlast line", b"", b"unterminated"]


def decode(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.end()


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_rule_with_every_line_end(line_end: str) -> None:
    stream = STREAM.replace("\n", line_end).encode()
    assert decode([stream]) == EVENTS


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_the_same_events_wherever_the_chunks_are_cut(line_end: str) -> None:
    stream = STREAM.replace("\n", line_end).encode()
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == EVENTS, f"cut at {cut}"
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == EVENTS  # byte by byte


def test_a_crlf_cut_between_cr_and_lf_is_one_line_end() -> None:
    # Were the \n read as a second (blank) line, "a" would end there and "b" be an event of its own.
    assert decode([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [b"a\nb"]


def test_an_event_completed_by_a_chunk_comes_out_of_that_chunk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\r\n") == []
    assert decoder.feed(b"\r\ndata: tw") == [b"one"]
    assert decoder.feed(b"o\r\n\r\n") == [b"two"]
    assert decoder.end() == []


def test_a_huge_line_in_many_chunks_is_joined_exactly() -> None:
    payload = bytes(range(33, 127)) * 100_000  # 9.4 MB, no line end in it
    stream = b"data: " + payload + b"\r\n\r\n"
    pieces = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    [event] = decode(pieces)
    assert event == payload


# --- the call --------------------------------------------------------------------------------


@dataclass
class Script:
    """What the raw upstream answers to one call."""

    status: int = 200
    pieces: list[bytes] = field(default_factory=list)  # written one by one
    content_type: bytes = b"text/event-stream"
    wait_before: int | None = None  # before this piece, wait until the test sets `go`
    drop: bool = False  # end without finishing the response (uvicorn then closes the connection)


class EventHost:
    """A raw ASGI upstream that writes `script`'s pieces as they are."""

    def __init__(self) -> None:
        self.url = ""
        self.script = Script()
        self.go = threading.Event()
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        script = self.script
        headers = [(b"content-type", script.content_type)]
        await send({"type": "http.response.start", "status": script.status, "headers": headers})
        for index, piece in enumerate(script.pieces):
            if index == script.wait_before:
                while not self.go.is_set():
                    await asyncio.sleep(0.005)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        if not script.drop:
            await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def server() -> Iterator[EventHost]:
    app = EventHost()
    with LoopbackServer(app) as loopback:
        app.url = loopback.url
        yield app


@pytest.fixture
def host(server: EventHost) -> Iterator[EventHost]:
    server.script, server.bodies = Script(), []
    server.go.clear()
    yield server
    server.go.set()  # nothing left waiting


def google_error(response: UpstreamResponse) -> ImagegateError:
    return error_for_status("toy", response.status_code, response.body.decode())


def events(host: EventHost, http: httpx.AsyncClient, **options: Any) -> AsyncIterator[bytes]:
    kwargs: dict[str, Any] = {"provider": "toy", "timeout": 10.0, "max_bytes": 64 << 20, "error": google_error}
    return stream_events(http, "POST", f"{host.url}/stream", json={"q": 1}, **{**kwargs, **options})


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [event async for event in stream]


async def test_events_come_out_as_they_arrive(host: EventHost, http: httpx.AsyncClient) -> None:
    # The second event is not written until the test has the first: had the call waited for the
    # whole body, it would wait forever (and the test time out).
    host.script = Script(pieces=[b"data: one\r\n\r\n", b"data: two\r\n\r\n"], wait_before=1)
    stream = events(host, http)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == b"one"
        host.go.set()
        assert [event async for event in stream] == [b"two"]
    assert host.bodies == [b'{"q":1}']  # the request went as given


async def test_a_9mb_data_line_comes_through(host: EventHost, http: httpx.AsyncClient) -> None:
    payload = b"QUJD" * (9 * 1024 * 1024 // 4)
    event = b"data: " + payload + b"\r\n\r\n"
    host.script = Script(pieces=[event[i : i + 100_000] for i in range(0, len(event), 100_000)])
    assert await collect(events(host, http)) == [payload]


async def test_the_cap_is_on_the_whole_stream_not_each_event(host: EventHost, http: httpx.AsyncClient) -> None:
    host.script = Script(pieces=[b"data: " + b"x" * 1000 + b"\n\n"] * 5)
    assert len(await collect(events(host, http, max_bytes=5100))) == 5
    received: list[bytes] = []
    with pytest.raises(UpstreamResponseTooLarge, match="larger than 3000 bytes"):
        async for item in events(host, http, max_bytes=3000):
            received.append(item)
    assert len(received) == 2  # each event is under the cap; the third passes it


async def test_a_non_2xx_answer_is_the_error_hook_s(host: EventHost, http: httpx.AsyncClient) -> None:
    host.script = Script(status=429, pieces=[b'{"error": ', b'"slow down"}'], content_type=b"application/json")
    with pytest.raises(UpstreamRateLimited) as info:
        await collect(events(host, http))
    assert info.value.message == 'toy returned HTTP 429: {"error": "slow down"}'  # the whole body, read
    assert info.value.upstream_status == 429


async def test_a_non_2xx_body_is_capped_too(host: EventHost, http: httpx.AsyncClient) -> None:
    host.script = Script(status=500, pieces=[b"<html>" + b"x" * 10_000], content_type=b"text/html")
    with pytest.raises(UpstreamResponseTooLarge):
        await collect(events(host, http, max_bytes=5000))


async def test_a_connection_dropped_mid_stream(host: EventHost, http: httpx.AsyncClient) -> None:
    host.script = Script(pieces=[b"data: one\n\n", b"data: tw"], drop=True)
    received: list[bytes] = []
    with pytest.raises(UpstreamConnectionError):
        async for item in events(host, http):
            received.append(item)
    assert received == [b"one"]


async def test_an_upstream_that_stops_sending_times_out(host: EventHost, http: httpx.AsyncClient) -> None:
    host.script = Script(pieces=[b"data: one\n\n", b"data: two\n\n"], wait_before=1)
    received: list[bytes] = []
    with pytest.raises(UpstreamTimeout):
        async for item in events(host, http, timeout=0.3):
            received.append(item)
    assert received == [b"one"]


async def test_a_refused_connection(http: httpx.AsyncClient) -> None:
    with LoopbackServer(EventHost()) as gone:
        url = gone.url
    stream = stream_events(http, "POST", url, provider="toy", timeout=5.0, max_bytes=1024, error=google_error)
    with pytest.raises(UpstreamConnectionError):
        await collect(stream)
