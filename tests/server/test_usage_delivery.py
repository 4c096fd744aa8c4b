"""A usage row counts as delivered once its answer was written to the client, end to end.

Real gateway servers on loopback with the default background usage writer, a fake Gemini, the
openai SDK (or a raw socket for a client that hangs up). The row is journaled when the upstream
made the images; the serving protocol's `imagegate.delivered` callbacks mark it once the answer
is out (server/delivery.py). A stopped gateway has flushed its journal, so reading the table
after `stop()` sees every row and mark it will ever write.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imagegate.server.serving import DRAIN_POLL_SECONDS, GuardedHttpToolsProtocol

from ..conftest import API_KEY, RunningGateway
from ..fakes.common import RawResponse
from ..fakes.gemini import FakeGemini
from .raw_http import HEAD, address

MODEL = "gemini-3-pro-image-preview"


def usage_rows(gateway: RunningGateway) -> list[tuple[str, int, int]]:
    """(request id, images, delivered) of every usage row, read from the gateway's database file."""
    with sqlite3.connect(gateway.settings.database_path) as conn:
        rows = conn.execute("SELECT request_id, images, delivered FROM usage ORDER BY id").fetchall()
    return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def background_gateway(gateway_factory: Any, fake: FakeGemini, **overrides: Any) -> RunningGateway:
    gateway: RunningGateway = gateway_factory(
        gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, usage_writer="background", **overrides
    )
    return gateway


def test_a_sync_answer_is_recorded_as_delivered(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = background_gateway(gateway_factory, fake_gemini)
    raw = gateway.client().images.with_raw_response.generate(model=MODEL, prompt="kept", response_format="b64_json")
    request_id = raw.headers["x-imagegate-request-id"]
    gateway.server.stop()
    assert usage_rows(gateway) == [(request_id, 1, 1)]


def test_a_stream_is_delivered_after_its_last_event(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = background_gateway(gateway_factory, fake_gemini)
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "streamed", "stream": True},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    ) as response:
        body = response.read()
        request_id = response.headers["x-imagegate-request-id"]
    assert b"image_generation.completed" in body
    gateway.server.stop()
    assert usage_rows(gateway) == [(request_id, 1, 1)]


def test_a_failed_stream_is_not_delivered(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    """n=2 where the second call fails, under the `fail` policy: the first image is paid for and
    recorded, the stream ends with an error event, so nothing was delivered."""
    gateway = background_gateway(gateway_factory, fake_gemini, n_failure_policy="fail")
    fake_gemini.enqueue(None, RawResponse(500, '{"error": {"code": 500, "message": "x", "status": "INTERNAL"}}'))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "half", "stream": True, "n": 2},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    ) as response:
        body = response.read()
    assert b"event: error" in body
    gateway.server.stop()
    assert [(images, delivered) for _, images, delivered in usage_rows(gateway)] == [(1, 0)]


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: a PNG that does not compress (megabytes, more than socket buffers hold)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def gemini_answer(png: bytes) -> str:
    """A generateContent answer carrying this image (Gemini's wire shape, as tests/fakes/gemini.py sends it)."""
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}}
    return json.dumps({"candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": "STOP"}]})


def test_a_client_that_hangs_up_before_the_answer_is_written_leaves_it_undelivered(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    """The upstream answers (the image is paid for) with ~4 MB of base64; the client never reads
    and resets the connection once the gateway recorded usage, so the answer cannot be written:
    the row is there, once, undelivered. Another request on the same gateway is delivered."""
    gateway = background_gateway(gateway_factory, fake_gemini)
    fake_gemini.enqueue(RawResponse(200, gemini_answer(noise_png(1024, 1024)), content_type="application/json"))
    body = json.dumps({"model": MODEL, "prompt": "never read", "response_format": "b64_json"}).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    try:
        sock.connect(address(gateway.url))
        sock.sendall(HEAD + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: len(usage_rows(gateway)) == 1, "the usage row")
        time.sleep(0.3)  # the gateway is stuck writing the answer into a full socket
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    delivered = gateway.client().images.with_raw_response.generate(model=MODEL, prompt="read", response_format="url")
    gateway.server.stop()
    rows = usage_rows(gateway)
    assert [(images, flag) for _, images, flag in rows] == [(1, 0), (1, 1)]
    assert rows[1][0] == delivered.headers["x-imagegate-request-id"]


def test_an_async_job_is_delivered_when_its_result_is_stored(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = background_gateway(gateway_factory, fake_gemini)
    headers = {"authorization": f"Bearer {API_KEY}", "prefer": "respond-async"}
    job = httpx.post(
        f"{gateway.url}/v1/images/generations", json={"model": MODEL, "prompt": "later"}, headers=headers, timeout=30
    ).json()

    def succeeded() -> bool:
        answer = httpx.get(f"{gateway.url}/v1/images/jobs/{job['id']}", headers=headers, timeout=30).json()
        return bool(answer["status"] == "succeeded")

    wait_until(succeeded, "the job")
    gateway.server.stop()
    assert [(images, delivered) for _, images, delivered in usage_rows(gateway)] == [(1, 1)]


def test_an_idempotent_replay_marks_the_first_requests_row(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = background_gateway(gateway_factory, fake_gemini)
    client = gateway.client()
    first = client.images.with_raw_response.generate(
        model=MODEL, prompt="once", response_format="url", extra_headers={"idempotency-key": "k-1"}
    )
    again = client.images.with_raw_response.generate(
        model=MODEL, prompt="once", response_format="url", extra_headers={"idempotency-key": "k-1"}
    )
    assert again.headers["x-imagegate-idempotent-replayed"] == "true"
    gateway.server.stop()
    assert usage_rows(gateway) == [(first.headers["x-imagegate-request-id"], 1, 1)]


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer with a Content-Length, read slowly (the gateway's buffer fills first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1]
    )
    while len(body) < length:  # ~4 MB/s: the gateway's last bytes wait in its buffer, not the kernel's
        time.sleep(0.001)
        chunk = sock.recv(4096)
        assert chunk, "the gateway closed before the whole answer"
        body += chunk
    return body


# uvloop resumes writing only once its buffer is all but empty (low-water mark 16 bytes), so the
# last bytes go straight to the kernel; asyncio's loop (used where the connection cap is at or past
# the descriptor limit, serving.loop_for) resumes at 16 KiB, and they wait in the gateway's buffer.
LOOPS = {"uvloop": {}, "asyncio": {"max_connections": 1 << 30}}


@pytest.mark.parametrize(("loop", "connection"), [("uvloop", "keep-alive"), ("asyncio", "close")])
def test_a_slow_reader_that_gets_the_whole_answer_is_delivered(
    gateway_factory: Any, fake_gemini: FakeGemini, loop: str, connection: str
) -> None:
    """The answer's last bytes may wait in the gateway's buffer until the client reads them: the
    row is marked once they drained (or, with Connection: close, once the close flushed them)."""
    gateway = background_gateway(gateway_factory, fake_gemini, **LOOPS[loop])
    fake_gemini.enqueue(RawResponse(200, gemini_answer(noise_png(1024, 1024)), content_type="application/json"))
    body = json.dumps({"model": MODEL, "prompt": "read slowly", "response_format": "b64_json"}).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address(gateway.url))
        sock.sendall(HEAD + f"connection: {connection}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: len(usage_rows(gateway)) == 1, "the usage row")
        time.sleep(0.3)  # the answer is stuck in the gateway's buffer meanwhile
        answer = json.loads(read_answer(sock))
        assert len(base64.b64decode(answer["data"][0]["b64_json"])) > 1_000_000
        time.sleep(0.3)  # a few drain checks
    gateway.server.stop()
    assert [(images, delivered) for _, images, delivered in usage_rows(gateway)] == [(1, 1)]


class Buffered:
    """The two things the protocol asks a transport when an answer is written (asyncio.Transport)."""

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered
        self.closing = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def protocol_on(loop: asyncio.AbstractEventLoop, transport: Buffered) -> GuardedHttpToolsProtocol:
    """The serving protocol's delivery bookkeeping, without a connection around it."""
    protocol = GuardedHttpToolsProtocol.__new__(GuardedHttpToolsProtocol)
    protocol.loop, protocol.transport = loop, transport  # type: ignore[assignment]
    protocol._draining, protocol._closed_after_answer, protocol._timer = [], False, None
    return protocol


@pytest.mark.parametrize(("ending", "delivered"), [("drained", True), ("closed-after-answer", True), ("reset", False)])
def test_an_answer_still_in_the_buffer_is_delivered_once_it_drains(
    monkeypatch: pytest.MonkeyPatch, ending: str, delivered: bool
) -> None:
    monkeypatch.setattr(HttpToolsProtocol, "connection_lost", lambda self, exc: None)
    loop = asyncio.new_event_loop()
    try:
        transport = Buffered(16_000)
        transport.closing = ending == "closed-after-answer"  # no keep-alive: uvicorn closed it before on_response
        protocol = protocol_on(loop, transport)
        calls: list[str] = []
        protocol._answer_written([lambda: calls.append("delivered")])
        loop.run_until_complete(asyncio.sleep(3 * DRAIN_POLL_SECONDS))
        assert calls == []  # still buffered: not yet
        transport.buffered = 0
        if ending == "drained":
            loop.run_until_complete(asyncio.sleep(3 * DRAIN_POLL_SECONDS))
        else:
            protocol.connection_lost(None if ending == "closed-after-answer" else ConnectionResetError())
        assert calls == (["delivered"] if delivered else [])
    finally:
        loop.close()
