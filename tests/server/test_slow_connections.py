"""Slow and numerous connections (imagegate.server.serving), with real sockets.

A slow-loris client drips its request head or body; the server closes it after the header or
idle timeout, caps how many connections it holds, and keeps serving normal clients meanwhile.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from openai import OpenAI

from ..conftest import API_KEY
from ..fakes.gemini import Delay, FakeGemini
from .raw_http import HEAD, address, drip_until_closed, get_body, read_until_closed
from .serve_process import ServeProcess


@contextmanager
def _slow_connections(url: str, count: int, payload: bytes = HEAD) -> Iterator[list[socket.socket]]:
    """`count` connections that each sent part of a request head and then went quiet."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(address(url), timeout=10))
            sock.sendall(payload)
            sockets.append(sock)
        yield sockets


def _gemini_env(fake: FakeGemini, **more: str) -> dict[str, str]:
    return {"GEMINI_API_KEY": fake.api_key, "GEMINI_BASE_URL": fake.base_url, "IMAGEGATE_API_KEYS": API_KEY, **more}


def test_header_timeout_closes_a_dripping_connection(gateway_factory: Any) -> None:
    gateway = gateway_factory(header_timeout_seconds=1, idle_timeout_seconds=5)
    with socket.create_connection(address(gateway.url), timeout=10) as sock:
        started = time.monotonic()
        answer, closed = drip_until_closed(sock, HEAD, every_s=0.1, timeout_s=8)
        elapsed = time.monotonic() - started
    assert closed, "a connection dripping its head a byte every 0.1 s was never closed"
    assert answer.startswith(b"HTTP/1.1 408 ")
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_header_timeout" and error["type"] == "invalid_request_error"
    assert 0.9 <= elapsed < 5  # the dripping kept it from looking idle; the head deadline ended it


def test_idle_timeout_closes_a_stalled_body_but_not_a_slow_upstream(
    gateway_factory: Any, fake_gemini: FakeGemini, caplog: Any
) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        idle_timeout_seconds=0.5,
        header_timeout_seconds=5,
    )
    caplog.set_level("INFO")
    with socket.create_connection(address(gateway.url), timeout=10) as sock:
        sock.sendall(HEAD + b"content-length: 100\r\n\r\n" + b'{"prompt": ')
        answer, closed = read_until_closed(sock, 5)
    assert closed and answer == b""  # the handler was reading the body: nobody to answer
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

    # The server being slow (an upstream that takes 3 idle timeouts) is not the client being slow.
    fake_gemini.enqueue(Delay(1.5))
    result = gateway.client().images.generate(model="gemini-3-pro-image-preview", prompt="a cat")
    assert result.data


def test_a_trickled_body_is_closed_though_never_idle(gateway_factory: Any, caplog: Any) -> None:
    """A byte every 0.1 s is never idle for 1 s, but at 10 bytes/s a body gets one header timeout
    plus its size at IMAGEGATE_MIN_BODY_BYTES_PER_SECOND (1024 by default)."""
    gateway = gateway_factory(idle_timeout_seconds=1, header_timeout_seconds=1)
    caplog.set_level("INFO")
    with socket.create_connection(address(gateway.url), timeout=10) as sock:
        sock.sendall(HEAD + b"content-length: 100000\r\n\r\n" + b'{"prompt": "')
        started = time.monotonic()
        answer, closed = drip_until_closed(sock, b"a", every_s=0.1, timeout_s=8)
        elapsed = time.monotonic() - started
    assert closed and elapsed < 5
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_idle_keep_alive_connection_is_closed(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = gateway_factory(idle_timeout_seconds=0.5)
    with socket.create_connection(address(gateway.url), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n")
        answer, closed = read_until_closed(sock, 4)
    assert answer.startswith(b"HTTP/1.1 200 ") and closed


def test_connection_cap_refuses_excess_connections_and_keeps_serving(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, max_connections=20
    )
    with _slow_connections(gateway.url, 20) as held:
        time.sleep(0.3)  # all 20 accepted before the excess arrive
        with _slow_connections(gateway.url, 5, payload=b"") as excess:
            answers = [read_until_closed(sock, 3) for sock in excess]
        for answer, closed in answers:
            assert closed and answer.startswith(b"HTTP/1.1 503 ")
            headers, _, body = answer.partition(b"\r\n\r\n")
            assert b"retry-after: 1" in headers.lower()
            assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert [read_until_closed(sock, 0.1) for sock in held] == [(b"", False)] * 20  # still open
    time.sleep(0.3)  # the held connections' slots are free again
    result = gateway.client().images.generate(model="gemini-3-pro-image-preview", prompt="a cat")
    assert result.data


def test_normal_client_is_served_while_300_slow_connections_are_open(tmp_path: Path, fake_gemini: FakeGemini) -> None:
    """Under a soft descriptor limit of 256 (the hard one higher) the server raises its limit:
    300 slow-loris connections do not use up what a normal client needs."""
    env = _gemini_env(fake_gemini, IMAGEGATE_HEADER_TIMEOUT_SECONDS="30", IMAGEGATE_IDLE_TIMEOUT_SECONDS="60")
    with ServeProcess(tmp_path, env=env, nofile=(256, None)) as server, _slow_connections(server.url, 300):
        time.sleep(0.5)
        client = OpenAI(api_key=API_KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=15)
        result = client.images.generate(model="gemini-3-pro-image-preview", prompt="a cat")
        assert result.data


def test_accept_failures_are_logged_once_per_interval(tmp_path: Path) -> None:
    """A connection cap set above a low descriptor limit makes accept() fail (EMFILE) for as long
    as the connections stay open; asyncio would log each failed attempt with a traceback."""
    env = {
        "IMAGEGATE_MAX_CONNECTIONS": "1000",
        "IMAGEGATE_HEADER_TIMEOUT_SECONDS": "30",
        "IMAGEGATE_IDLE_TIMEOUT_SECONDS": "60",
    }
    with ServeProcess(tmp_path, env=env, nofile=(64, 64)) as server:
        before = len(server.log())
        with _slow_connections(server.url, 100):
            time.sleep(3)
            grown = server.log()[before:]
        assert "accept() failed" in grown  # the failures are reported...
        assert grown.count("accept() failed") == 1  # ...once per interval (10 s)
        assert len(grown) < 5000
        time.sleep(1.5)  # asyncio retries accept() after 1 s
        assert server.process.poll() is None
        assert json.loads(get_body(server.url, "/health"))["status"] == "ok"
