"""The gateway's own limits, end to end through the openai SDK: the conversion memory budget, the
result store's size budget and a full disk (503s in OpenAI's error shape), and usage rows that
are written even when a request fails after its upstream was paid."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagegate import storage

from ..conftest import RunningGateway
from ..fakes.common import Hang
from ..fakes.gemini import FakeGemini, GeminiError

MODEL = "gemini-3-pro-image-preview"


def start(gateway_factory: Any, fake: FakeGemini, **settings: Any) -> RunningGateway:
    gw: RunningGateway = gateway_factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **settings)
    return gw


def usage_rows(gw: RunningGateway) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(gw.settings.database_path)
    try:
        return db.execute("SELECT request_id, provider, images, cost FROM usage ORDER BY id").fetchall()
    finally:
        db.close()


def result_rows(gw: RunningGateway) -> int:
    db = sqlite3.connect(gw.settings.database_path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    finally:
        db.close()


def results_dir(gw: RunningGateway) -> Path:
    return gw.settings.data_dir / "results"


def assert_openai_503(error: openai.APIStatusError, code: str) -> None:
    assert error.status_code == 503
    body = error.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert int(error.response.headers["retry-after"]) >= 1


def test_a_conversion_over_the_memory_budget_is_503_and_its_usage_is_recorded(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    # A 1024x1024 WebP encode needs ~11 MB; the budget is 4 MB.
    gw = start(gateway_factory, fake_gemini, conversion_memory_bytes=4 * 2**20)
    client = gw.client()
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(
            model=MODEL, prompt="too big to convert", extra_body={"output_format": "webp"}, response_format="b64_json"
        )
    assert_openai_503(caught.value, "conversion_busy")
    assert "IMAGEGATE_CONVERSION_MEMORY_BYTES" in caught.value.response.json()["error"]["message"]
    # The upstream made (and billed) the image: the usage row says so.
    assert [row[1:3] for row in usage_rows(gw)] == [("gemini", 1)]
    assert usage_rows(gw)[0][3] > 0
    # An image passed through unconverted decodes no pixels, so it needs no budget.
    passed = client.images.generate(model=MODEL, prompt="as is", response_format="b64_json")
    assert passed.data[0].b64_json


def test_a_full_disk_is_503_storage_full_with_no_half_file_and_usage_kept(
    gateway_factory: Any, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = start(gateway_factory, fake_gemini)
    client = gw.client()

    def half_then_full(fd: int, data: memoryview) -> int:
        if len(data) > 1000:
            return os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "_write_chunk", half_then_full)
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model=MODEL, prompt="disk full", response_format="url")
    assert_openai_503(caught.value, "storage_full")
    assert list(results_dir(gw).iterdir()) == []
    assert result_rows(gw) == 0
    assert [row[1:3] for row in usage_rows(gw)] == [("gemini", 1)]

    monkeypatch.undo()  # space again: the same server serves the next request
    served = client.images.generate(model=MODEL, prompt="space again", response_format="url")
    url = served.data[0].url
    assert url is not None and httpx.get(url).status_code == 200
    assert len(usage_rows(gw)) == 2


def test_the_result_store_keeps_within_its_budget_by_evicting_the_oldest(
    gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    probe = start(gateway_factory, fake_gemini, data_dir=tmp_path / "probe")
    probe.client().images.generate(model=MODEL, prompt="same", response_format="url")
    size = sum(p.stat().st_size for p in results_dir(probe).iterdir())
    gw = start(gateway_factory, fake_gemini, data_dir=tmp_path / "budget", results_max_bytes=int(size * 2.5))
    client = gw.client()
    urls = [client.images.generate(model=MODEL, prompt="same", response_format="url").data[0].url for _ in range(4)]
    assert [httpx.get(str(url)).status_code for url in urls] == [404, 404, 200, 200]
    assert sum(p.stat().st_size for p in results_dir(gw).iterdir()) <= size * 2.5


def test_a_result_larger_than_the_store_budget_is_503_storage_full(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = start(gateway_factory, fake_gemini, results_max_bytes=100)
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client().images.generate(model=MODEL, prompt="big", response_format="url")
    assert_openai_503(caught.value, "storage_full")
    assert "IMAGEGATE_RESULTS_MAX_BYTES" in caught.value.response.json()["error"]["message"]
    assert list(results_dir(gw).iterdir()) == []
    assert len(usage_rows(gw)) == 1


def test_a_usage_row_the_database_refused_is_inserted_once_it_takes_writes(
    gateway_factory: Any, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegate.usage import UsageLog

    failing = {"on": True}
    real_insert = UsageLog._insert

    def insert(self: UsageLog, created_at: float, usage: Any) -> None:
        if failing["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        real_insert(self, created_at, usage)

    monkeypatch.setattr(UsageLog, "_insert", insert)
    gw = start(gateway_factory, fake_gemini)
    client = gw.client()
    first = client.images.with_raw_response.generate(model=MODEL, prompt="db full", response_format="b64_json")
    assert first.status_code == 200  # the client got its image; the row waits in the spool
    assert usage_rows(gw) == []
    failing["on"] = False
    second = client.images.with_raw_response.generate(model=MODEL, prompt="db back", response_format="b64_json")
    ids = [row[0] for row in usage_rows(gw)]
    assert sorted(ids) == sorted([first.headers["x-request-id"], second.headers["x-request-id"]])


def _disk_full(fd: int, data: memoryview) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_n_images_cost_n_and_a_paid_request_that_then_fails_records_that_cost(
    gateway_factory: Any, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cost is counted from the upstream's images before the output pipeline releases them.
    gw = start(gateway_factory, fake_gemini)
    client = gw.client()
    served = client.images.generate(model=MODEL, prompt="two", n=2)  # the default: url and b64_json
    assert len(served.data) == 2 and all(d.url and d.b64_json for d in served.data)
    assert dict(served.usage.model_dump())["cost"] == pytest.approx(2 * 0.134)  # Gemini API, 1K

    monkeypatch.setattr(storage, "_write_chunk", _disk_full)
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model=MODEL, prompt="two, disk full", n=2)
    assert_openai_503(caught.value, "storage_full")
    assert [row[1:] for row in usage_rows(gw)] == [("gemini", 2, pytest.approx(2 * 0.134))] * 2


def test_n_failure_policy_fail_still_records_the_images_it_paid_for(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = start(gateway_factory, fake_gemini, n_failure_policy="fail")
    fake_gemini.enqueue(GeminiError(503, "UNAVAILABLE", "overloaded"))
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client().images.generate(model=MODEL, prompt="one of two fails", n=2)
    assert caught.value.status_code == 503
    # One call failed, the other made (and billed) an image that the policy then withheld.
    assert [row[1:] for row in usage_rows(gw)] == [("gemini", 1, pytest.approx(0.134))]


def test_the_usage_row_of_a_paid_failure_carries_what_a_served_one_does(
    gateway_factory: Any, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = start(gateway_factory, fake_gemini)
    fields = {"model": "nano-banana-pro", "prompt": "p", "user": "u-1", "safety_identifier": "s-1"}

    def send(client_request_id: str) -> httpx.Response:
        return httpx.post(
            f"{gw.url}/v1/images/generations",
            json=fields,
            timeout=30,
            headers={"authorization": "Bearer sk-test-gateway", "x-request-id": client_request_id},
        )

    served = send("client-served")
    monkeypatch.setattr(storage, "_write_chunk", _disk_full)
    failed = send("client-failed")
    assert (served.status_code, failed.status_code) == (200, 503)
    db = sqlite3.connect(gw.settings.database_path)
    try:
        rows = db.execute(
            "SELECT request_id, client_request_id, model, user, safety_identifier, cost_estimated, "
            "images FROM usage ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    assert rows == [
        (r.headers["x-imagegate-request-id"], r.headers["x-request-id"], "nano-banana-pro", "u-1", "s-1", 0, 1)
        for r in (served, failed)
    ]


def test_a_request_past_its_deadline_records_the_calls_that_were_billed(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = start(gateway_factory, fake_gemini, request_timeout_seconds=1.5)
    fake_gemini.enqueue(Hang(30))  # one of the two calls never answers; the other makes its image
    response = httpx.post(
        f"{gw.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "p", "n": 2},
        headers={"authorization": "Bearer sk-test-gateway"},
        timeout=30,
    )
    assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"
    assert [row[1:] for row in usage_rows(gw)] == [("gemini", 1, pytest.approx(0.134))]


def test_n_images_are_stored_all_or_none(
    gateway_factory: Any, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills after the first of two images: the answer is a 503, and the first image,
    whose URL no answer will ever name, is not left taking up the store's budget."""
    gw = start(gateway_factory, fake_gemini)
    written: list[Path] = []
    real_write = storage._write_new_file

    def first_file_then_full(path: Path, data: bytes) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)
        written.append(path)

    monkeypatch.setattr(storage, "_write_new_file", first_file_then_full)
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client().images.generate(model=MODEL, prompt="two, room for one", n=2, response_format="url")
    assert_openai_503(caught.value, "storage_full")
    assert len(written) == 1  # the first image was stored in full
    assert list(results_dir(gw).iterdir()) == []
    assert result_rows(gw) == 0
    assert [row[1:3] for row in usage_rows(gw)] == [("gemini", 2)]
