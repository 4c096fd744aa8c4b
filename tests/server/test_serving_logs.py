"""What the server says in its log (start-up, upstream failures, client disconnects), and the
headers result files carry."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import httpx
import pytest
from openai import InternalServerError

from ..conftest import API_KEY
from ..fakes.common import Hang
from ..fakes.gemini import FakeGemini, GeminiError
from .raw_http import HEAD, address

MODEL = "gemini-3-pro-image-preview"


def _imagegate_records(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "imagegate"]


def test_start_up_log_names_providers_and_models(gateway_factory: Any, fake_gemini: FakeGemini, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="imagegate")
    gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    lines = [r.getMessage() for r in _imagegate_records(caplog) if r.getMessage().startswith("serving ")]
    assert len(lines) == 1
    assert " via gemini: " in lines[0] and f"{MODEL} (gemini)" in lines[0]


def test_upstream_failure_is_one_line_with_provider_status_message_and_request_id(
    gateway_factory: Any, fake_gemini: FakeGemini, caplog: Any
) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        retry_attempts=2,
        retry_backoff_seconds=0.01,
    )
    fake_gemini.enqueue(
        GeminiError(500, "INTERNAL", "the model crashed\nTraceback: here"), GeminiError(500, "INTERNAL", "still down")
    )
    caplog.set_level(logging.INFO, logger="imagegate")
    with pytest.raises(InternalServerError) as raised:
        gateway.client().images.generate(model=MODEL, prompt="a cat", extra_headers={"x-request-id": "req-log-1"})
    # The log names the gateway's own id (unique per request), not the client's reusable one.
    request_id = raised.value.response.headers["x-imagegate-request-id"]
    assert request_id.startswith("req_")
    failures = [r for r in _imagegate_records(caplog) if r.getMessage().startswith("upstream failure")]
    assert [r.levelname for r in failures] == ["WARNING", "WARNING"]
    first, second = (r.getMessage() for r in failures)
    assert "\n" not in first  # the upstream's newline is quoted, not written
    for part in (
        "provider=gemini",
        "status=500",
        "attempt=1/2",
        "then=retry",
        f"request_id={request_id}",
        "the model crashed\\nTraceback: here",
    ):
        assert part in first
    assert "attempt=2/2" in second and "then=no-retry" in second and "still down" in second


def test_client_disconnect_mid_body_is_one_info_line(gateway: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    with socket.create_connection(address(gateway.url), timeout=5) as sock:
        sock.sendall(HEAD + b"content-length: 1000\r\n\r\n" + b'{"prompt": ')
        time.sleep(0.3)
    time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    gone = [r for r in _imagegate_records(caplog) if "client disconnected" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelname == "INFO"


def test_client_disconnect_during_the_upstream_call_logs_no_error(
    gateway: Any, fake_gemini: FakeGemini, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    fake_gemini.enqueue(Hang(30))
    body = json.dumps({"model": MODEL, "prompt": "a cat"}).encode()
    with socket.create_connection(address(gateway.url), timeout=5) as sock:
        sock.sendall(HEAD + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        fake_gemini.wait_for_requests(1)
    time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_result_files_are_not_sniffed(gateway: Any) -> None:
    result = gateway.client().images.generate(model=MODEL, prompt="a cat", response_format="url")
    assert result.data and result.data[0].url
    response = httpx.get(result.data[0].url, timeout=10)
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"


def test_keep_alive_client_survives_idle_closes(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    """The SDK's pooled connections are closed by the idle timeout between requests; its next
    request opens a new one instead of failing."""
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, idle_timeout_seconds=0.3
    )
    client = gateway.client(api_key=API_KEY)
    for _ in range(2):
        assert client.models.list().data
        time.sleep(0.6)
    assert client.models.list().data
