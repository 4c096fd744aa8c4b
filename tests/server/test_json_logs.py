"""IMAGEGATE_LOG_FORMAT=json: every line one JSON object, one access line per request with who
asked and what served it, and upstream failures with their reasons."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import InternalServerError

from imagegate.keys import STATIC_ID_PREFIX, hash_key
from imagegate.logs import JsonFormatter
from imagegate.server.serving import _log_config

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini, GeminiError
from .serve_process import ServeProcess

MODEL = "gemini-3-pro-image-preview"


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """What the `imagegate` loggers wrote so far, through the JSON formatter, parsed line by line.

    Whatever earlier tests (or the libraries they loaded) did to logging is set aside for the test
    and put back after it: `imagegate` at INFO, its children enabled and propagating to it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("imagegate")
    children = [
        child
        for name, child in logging.Logger.manager.loggerDict.items()
        if name.startswith("imagegate.") and isinstance(child, logging.Logger)
    ]
    saved = [(one, one.level, one.disabled, one.propagate) for one in (logger, *children)]
    disabled_below = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    for child in children:
        child.setLevel(logging.NOTSET)
        child.disabled, child.propagate = False, True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False

    def read() -> list[dict[str, Any]]:
        # The access line is written once the answer has gone out, so the client may have it a
        # moment before the line exists: wait for it (a few seconds at most).
        deadline = time.monotonic() + 5
        while '"imagegate.access"' not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield read
    finally:
        logger.removeHandler(handler)
        for one, level, disabled, propagate in saved:
            one.setLevel(level)
            one.disabled, one.propagate = disabled, propagate
        logging.disable(disabled_below)


def test_the_access_line_names_the_request_key_id_model_provider_and_adjustments(
    gateway: RunningGateway, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    raw = gateway.client().images.with_raw_response.generate(model=MODEL, prompt="a cat", size="1792x1024")
    request_id = raw.headers["x-imagegate-request-id"]
    lines = json_lines()
    access = [line for line in lines if line["logger"] == "imagegate.access"]
    assert len(access) == 1
    line = access[0]
    assert {"time", "level", "logger", "message"} <= line.keys() and line["level"] == "INFO"
    assert line["request_id"] == request_id
    assert line["key_id"] == STATIC_ID_PREFIX + hash_key(API_KEY)[:12]
    assert (line["model"], line["provider"], line["status"], line["route"]) == (
        MODEL,
        "gemini",
        200,
        "/v1/images/generations",
    )
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    assert {"param": "size", "requested": "1792x1024"}.items() <= line["adjustments"][0].items()
    assert all(API_KEY not in json.dumps(entry) for entry in lines)  # never the key itself


def test_an_upstream_failure_line_carries_its_provider_status_code_attempt_and_reason(
    gateway: RunningGateway, fake_gemini: FakeGemini, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "the model crashed"))
    with pytest.raises(InternalServerError) as raised:
        gateway.client().images.generate(model=MODEL, prompt="a cat")
    request_id = raised.value.response.headers["x-imagegate-request-id"]
    lines = json_lines()
    (failure,) = [line for line in lines if line["message"].startswith("upstream failure")]
    assert failure["level"] == "WARNING" and failure["request_id"] == request_id
    assert (failure["provider"], failure["upstream_status"], failure["code"], failure["attempt"]) == (
        "gemini",
        500,
        "upstream_error",
        1,
    )
    assert "the model crashed" in failure["reason"]
    (access,) = [line for line in lines if line["logger"] == "imagegate.access"]
    assert (access["status"], access["model"], access["provider"]) == (raised.value.status_code, MODEL, None)


def test_text_format_keeps_uvicorns_formatter_and_json_replaces_every_one() -> None:
    text = _log_config("info", "text")
    assert text["formatters"]["default"]["()"] == "uvicorn.logging.DefaultFormatter"
    assert "root" not in text
    as_json = _log_config("info", "json")
    assert {f["()"] for f in as_json["formatters"].values()} == {"imagegate.logs.JsonFormatter"}
    assert as_json["root"]["handlers"] == ["default"]  # other libraries' lines too


def test_imagegate_serve_writes_only_json_lines(tmp_path: Path, fake_gemini: FakeGemini) -> None:
    env = {
        "IMAGEGATE_LOG_FORMAT": "json",
        "IMAGEGATE_API_KEYS": API_KEY,
        "GEMINI_API_KEY": fake_gemini.api_key,
        "GEMINI_BASE_URL": fake_gemini.base_url,
    }
    with ServeProcess(tmp_path, env=env) as server:
        answer = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"model": MODEL, "prompt": "a cat", "response_format": "b64_json"},
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        assert answer.status_code == 200
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # each line parses, uvicorn's own included
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "imagegate.access"]
    assert len(access) == 1 and access[0]["request_id"] == answer.headers["x-imagegate-request-id"]
    assert not [e for e in entries if e["logger"] == "uvicorn.access"], entries  # ours replaces it
