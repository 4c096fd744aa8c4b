"""`imagegate serve --workers 2`: /metrics sums every worker's counts, whichever worker answers
the scrape, and a worker that dies leaves its counts in the sums but not its in-flight requests."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ..conftest import API_KEY
from ..fakes.gemini import FakeGemini, Hang
from .serve_process import ServeProcess
from .test_metrics import value
from .test_workers import _alive, _children

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the worker pids")
MODEL = "gemini-3-pro-image-preview"
LABELS = {"route": "/v1/images/generations", "model": MODEL, "provider": "gemini", "status": "200"}
REQUESTS = 12


def _serve(tmp_path: Path, fake_gemini: FakeGemini) -> ServeProcess:
    env = {
        "IMAGEGATE_API_KEYS": API_KEY,
        "IMAGEGATE_LOG_FORMAT": "json",  # each line names its worker's pid
        "GEMINI_API_KEY": fake_gemini.api_key,
        "GEMINI_BASE_URL": fake_gemini.base_url,
    }
    return ServeProcess(tmp_path, env=env, args=("--workers", "2"), startup_timeout_s=90)


def _generate(url: str) -> int:
    body = {"model": MODEL, "prompt": "a cat", "response_format": "b64_json"}
    # A new connection each time, so that both workers get to accept some.
    headers = {"authorization": f"Bearer {API_KEY}"}
    return httpx.post(f"{url}/v1/images/generations", json=body, headers=headers, timeout=60).status_code


def _scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def _workers(server: ServeProcess) -> list[int]:
    """The worker processes (multiprocessing's resource tracker is a child of the master too)."""
    return [p for p in _children(server.process.pid) if _alive(p) and b"spawn_main" in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _serving_pids(server: ServeProcess) -> set[int]:
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    return {line["pid"] for line in lines if line["logger"] == "imagegate.access"}


@linux_only
def test_the_counts_are_the_sum_over_both_workers(tmp_path: Path, fake_gemini: FakeGemini) -> None:
    earlier = _metric_dirs()
    with _serve(tmp_path, fake_gemini) as server:
        assert len(_metric_dirs() - earlier) == 1  # the master made the workers' directory
        _wait_for(lambda: len(_workers(server)) == 2, 60, "two workers")
        _wait_for(lambda: all(_answers(server.url) for _ in range(4)), 60, "both workers to serve")
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: _generate(server.url), range(REQUESTS // 2)))
        # One worker tends to accept every connection. Stopped, it accepts none: the other gets
        # the second half (briefly, within uvicorn's health-check timeout).
        busy = _serving_pids(server)
        for pid in busy if len(busy) == 1 else ():
            os.kill(pid, signal.SIGSTOP)
        try:
            statuses += [_generate(server.url) for _ in range(REQUESTS // 2)]
        finally:
            for pid in busy:
                os.kill(pid, signal.SIGCONT)
        assert statuses == [200] * REQUESTS
        assert len(_serving_pids(server)) == 2
        for _ in range(6):  # scrapes land on either worker: each sees the whole
            text = _scrape(server.url)
            assert value(text, "imagegate_requests_total", **LABELS) == REQUESTS
            assert value(text, "imagegate_images_total", model=MODEL, provider="gemini") == REQUESTS
            assert value(text, "imagegate_upstream_requests_total", provider="gemini", outcome="ok") == REQUESTS
            assert value(text, "imagegate_requests_in_flight") == 0
    assert not _metric_dirs() - earlier  # and removed it when it stopped


def _metric_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("imagegate-metrics-*"))


@linux_only
def test_a_dead_workers_requests_stay_counted_and_leave_the_in_flight_gauge(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    with _serve(tmp_path, fake_gemini) as server:
        _wait_for(lambda: len(_workers(server)) == 2, 60, "two workers")
        assert [_generate(server.url) for _ in range(3)] == [200] * 3
        fake_gemini.enqueue(Hang(60), Hang(60))
        hanging = [threading.Thread(target=_generate_ignoring_errors, args=(server.url,)) for _ in range(2)]
        for thread in hanging:
            thread.start()
        fake_gemini.wait_for_requests(5, timeout_s=30)
        assert value(_scrape(server.url), "imagegate_requests_in_flight") == 2
        old = _workers(server)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: len(set(_workers(server)) - set(old)) == 2, 60, "two new workers")
        _wait_for(lambda: _answers(server.url), 60, "the new workers to serve")
        for thread in hanging:
            thread.join(30)
        text = _scrape(server.url)
        assert value(text, "imagegate_requests_in_flight") == 0  # the dead workers' live gauges are gone
        assert value(text, "imagegate_requests_total", **LABELS) == 3  # their counts are not


def _generate_ignoring_errors(url: str) -> None:
    try:
        _generate(url)
    except httpx.HTTPError:  # its worker was killed mid-request
        pass


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
