"""Idempotency-Key end to end (the official openai SDK and raw httpx against a real gateway):
a key reused for another request is a 422, `/v1` and `/openai/v1` share keys, the fingerprint
is of the parsed request (a retried multipart upload has another boundary), a kept answer whose
result URLs have expired says so with a 410, and a claim left by a killed server expires within
the request deadline. The basics (replay, concurrent duplicates, errors release the key, keys
per API key) are in test_resilience.py."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.common import Hang
from ..fakes.gemini import FakeGemini
from ..fakes.images import solid_png
from ..test_cli import free_port, imagegate_command

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def post(gw: RunningGateway, body: dict[str, Any], key: str, path: str = "/v1/images/generations") -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json=body, headers=AUTH | {"Idempotency-Key": key}, timeout=30)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "a red bicycle", "response_format": "b64_json"} | fields


def usage_count(gw: RunningGateway) -> int:
    with sqlite3.connect(gw.settings.database_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])


# --- the same key for another request ---------------------------------------------------------


def test_same_key_with_another_prompt_is_a_422_with_the_sdk(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    client = gateway.client(max_retries=2)  # the SDK retries 408/409/429/5xx, never a 422
    headers = {"Idempotency-Key": "order-17"}
    first = client.images.generate(
        model=MODEL, prompt="a red bicycle", response_format="b64_json", extra_headers=headers
    )
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.images.generate(model=MODEL, prompt="a blue bicycle", response_format="b64_json", extra_headers=headers)
    assert caught.value.status_code == 422
    error = caught.value.response.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    assert error["type"] == "invalid_request_error" and "different request" in error["message"]
    assert len(fake_gemini.requests) == 1 and usage_count(gateway) == 1  # nothing generated for it
    # The key still replays its own request.
    again = client.images.generate(
        model=MODEL, prompt="a red bicycle", response_format="b64_json", extra_headers=headers
    )
    assert again.data[0].b64_json == first.data[0].b64_json
    assert len(fake_gemini.requests) == 1


@pytest.mark.parametrize("change", [{"n": 2}, {"size": "1536x1024"}, {"seed": 7}, {"enable_web_search": True}])
def test_any_changed_field_is_another_request(
    gateway: RunningGateway, fake_gemini: FakeGemini, change: dict[str, Any]
) -> None:
    assert post(gateway, body(), "k").status_code == 200
    reused = post(gateway, body(**change), "k")
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert len(fake_gemini.requests) == 1


def test_the_same_fields_in_another_order_are_the_same_request(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    fields = body(size="1024x1024", seed=3)
    first = post(gateway, fields, "ordered")
    again = post(gateway, dict(reversed(list(fields.items()))), "ordered")
    assert again.status_code == 200 and again.headers["x-imagegate-idempotent-replayed"] == "true"
    assert again.content == first.content and len(fake_gemini.requests) == 1


def test_a_waiting_duplicate_with_another_body_is_refused_at_once(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    """While the first request still runs, a reuse for another request does not wait for it."""
    fake_gemini.enqueue(Hang(5.0))
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(post(gateway, body(), "busy")))
    first.start()
    deadline = time.monotonic() + 20
    while not fake_gemini.requests:
        assert time.monotonic() < deadline, "the first request never reached the upstream"
        time.sleep(0.01)
    reused = post(gateway, body(prompt="something else"), "busy")
    still_running = first.is_alive() and not results  # the first one hangs for 5 s upstream
    first.join(timeout=30)
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert still_running, "the reuse was answered only after the first request had finished"
    assert [r.status_code for r in results] == [200]


# --- edits: the parsed request, not the raw body ------------------------------------------------


def edit(gw: RunningGateway, image: bytes, key: str, prompt: str = "make it blue") -> httpx.Response:
    """A multipart edit; httpx draws a new boundary for every request, as any client does."""
    return httpx.post(
        f"{gw.url}/v1/images/edits",
        headers=AUTH | {"Idempotency-Key": key},
        data={"model": MODEL, "prompt": prompt, "response_format": "b64_json"},
        files=[("image[]", ("in.png", image, "image/png"))],
        timeout=30,
    )


def test_a_retried_multipart_edit_replays_and_another_image_is_a_422(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    red, green = solid_png(64, 64, (200, 0, 0)), solid_png(64, 64, (0, 200, 0))
    first = edit(gateway, red, "edit-1")
    again = edit(gateway, red, "edit-1")
    assert first.status_code == again.status_code == 200
    assert again.headers["x-imagegate-idempotent-replayed"] == "true" and again.content == first.content
    other_image = edit(gateway, green, "edit-1")
    assert other_image.status_code == 422 and other_image.json()["error"]["param"] == "Idempotency-Key"
    assert len(fake_gemini.requests) == 1


def test_an_edit_by_url_is_fingerprinted_by_its_url(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    def by_url(url: str) -> httpx.Response:
        return post(gateway, body(images=[{"image_url": url}]), "url-edit", path="/v1/images/edits")

    red = "data:image/png;base64," + base64.b64encode(solid_png(32, 32, (200, 0, 0))).decode()
    green = "data:image/png;base64," + base64.b64encode(solid_png(32, 32, (0, 200, 0))).decode()
    assert by_url(red).status_code == 200
    assert by_url(red).headers["x-imagegate-idempotent-replayed"] == "true"
    assert by_url(green).status_code == 422
    assert len(fake_gemini.requests) == 1


# --- one scope for every mount ------------------------------------------------------------------


def test_v1_and_openai_v1_share_a_key(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    first = post(gateway, body(), "mounted", path="/v1/images/generations")
    other_mount = post(gateway, body(), "mounted", path="/openai/v1/images/generations")
    assert other_mount.status_code == 200 and other_mount.headers["x-imagegate-idempotent-replayed"] == "true"
    assert other_mount.content == first.content
    assert len(fake_gemini.requests) == 1 and usage_count(gateway) == 1


def test_generations_and_edits_keep_their_own_keys(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    assert post(gateway, body(), "endpoint").status_code == 200
    edited = edit(gateway, solid_png(32, 32, (1, 2, 3)), "endpoint")
    assert edited.status_code == 200 and "x-imagegate-idempotent-replayed" not in edited.headers
    assert len(fake_gemini.requests) == 2


# --- a kept answer whose result URLs expired ------------------------------------------------------


@pytest.fixture
def short_results(gateway_factory: Any, fake_gemini: FakeGemini) -> RunningGateway:
    gw: RunningGateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, result_ttl_seconds=1.0
    )
    return gw


def wait_until_gone(url: str) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(url, timeout=10).status_code != 404:
        assert time.monotonic() < deadline, "the result never expired"
        time.sleep(0.1)


def test_replay_with_live_urls_serves_them_and_with_expired_ones_is_a_410(
    short_results: RunningGateway, fake_gemini: FakeGemini
) -> None:
    client = short_results.client(max_retries=2)
    headers = {"Idempotency-Key": "hosted"}
    first = client.images.generate(model=MODEL, prompt="hosted", response_format="url", extra_headers=headers)
    url = first.data[0].url
    assert url is not None
    replay = client.images.with_raw_response.generate(
        model=MODEL, prompt="hosted", response_format="url", extra_headers=headers
    )
    assert replay.headers["x-imagegate-idempotent-replayed"] == "true"
    assert replay.parse().data[0].url == url and httpx.get(url, timeout=10).status_code == 200  # live: replayed

    wait_until_gone(url)
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.generate(model=MODEL, prompt="hosted", response_format="url", extra_headers=headers)
    assert caught.value.status_code == 410
    error = caught.value.response.json()["error"]
    assert error["code"] == "idempotency_results_gone" and error["param"] == "Idempotency-Key"
    assert "new Idempotency-Key" in error["message"]
    assert len(fake_gemini.requests) == 1  # never generated (nor billed) again under the same key
    # A new key generates.
    fresh = client.images.generate(
        model=MODEL, prompt="hosted", response_format="url", extra_headers={"Idempotency-Key": "hosted-2"}
    )
    assert fresh.data[0].url and httpx.get(fresh.data[0].url, timeout=10).status_code == 200


def test_a_b64_answer_replays_after_the_result_ttl(short_results: RunningGateway, fake_gemini: FakeGemini) -> None:
    """Only hosted URLs expire; an answer that carries its images replays for the whole key TTL."""
    inline = post(short_results, body(), "inline")
    hosted = post(short_results, body(response_format="url"), "hosted-probe")
    wait_until_gone(hosted.json()["data"][0]["url"])
    again = post(short_results, body(), "inline")
    assert again.status_code == 200 and again.headers["x-imagegate-idempotent-replayed"] == "true"
    assert again.content == inline.content


def test_a_both_answer_replays_after_the_result_ttl_with_its_urls_reissued(
    short_results: RunningGateway, fake_gemini: FakeGemini
) -> None:
    """The default answer carries each image twice: expired URLs are stored again from its own
    b64_json (no second generation), not a 410."""
    default = {"model": MODEL, "prompt": "both forms"}
    first = post(short_results, default, "both").json()["data"][0]
    assert first["url"] and first["b64_json"]
    wait_until_gone(first["url"])
    again = post(short_results, default, "both")
    assert again.status_code == 200 and again.headers["x-imagegate-idempotent-replayed"] == "true"
    item = again.json()["data"][0]
    assert item["b64_json"] == first["b64_json"] and item["url"] != first["url"]
    live = httpx.get(item["url"], timeout=10)
    assert live.status_code == 200 and live.content == base64.b64decode(first["b64_json"])
    with sqlite3.connect(short_results.settings.database_path) as db:  # kept so for the next replay
        (results,) = db.execute("SELECT results FROM idempotency").fetchone()
    assert item["url"].endswith(f"/results/{json.loads(results)[0]}")
    assert len(fake_gemini.requests) == 1


# --- a claim left by a killed server -----------------------------------------------------------


@pytest.fixture
def serve(fake_gemini: FakeGemini, tmp_path: Path) -> Iterator[Any]:
    """serve() -> (process, base URL) of `imagegate serve` on a shared data dir; all are killed after."""
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ) | {
        "IMAGEGATE_API_KEYS": API_KEY,
        "IMAGEGATE_DATA_DIR": str(tmp_path / "serve-data"),
        "IMAGEGATE_REQUEST_TIMEOUT_SECONDS": "3",
        "IMAGEGATE_RETRY_ATTEMPTS": "1",
        "GEMINI_API_KEY": fake_gemini.api_key,
        "GEMINI_BASE_URL": fake_gemini.base_url,
    }

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(tmp_path / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*imagegate_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text(errors="replace")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve never became healthy"
            time.sleep(0.1)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_a_claim_left_by_a_killed_server_expires_within_the_deadline(serve: Any, fake_gemini: FakeGemini) -> None:
    """kill -9 mid-request leaves the key claimed; a retry on a new server takes the claim over once
    the request deadline (3 s here) and its margin have passed, instead of 504s for 24 hours."""
    request = {"model": MODEL, "prompt": "crash", "response_format": "b64_json"}
    headers = AUTH | {"Idempotency-Key": "crash-1"}
    first, base = serve()
    fake_gemini.enqueue(Hang(60.0))
    sender = threading.Thread(
        target=lambda: _ignore_errors(
            lambda: httpx.post(f"{base}/v1/images/generations", json=request, headers=headers, timeout=30)
        )
    )
    sender.start()
    deadline = time.monotonic() + 20
    while not fake_gemini.requests:
        assert time.monotonic() < deadline, "the first request never reached the upstream"
        time.sleep(0.01)
    first.kill()  # SIGKILL: no cleanup, the pending claim stays in the database
    first.wait(timeout=10)
    sender.join(timeout=30)

    _, base = serve()
    statuses = []
    give_up = time.monotonic() + 30  # the claim lives 3 s + 3 s; each retry waits up to 3 s
    while time.monotonic() < give_up:
        response = httpx.post(f"{base}/v1/images/generations", json=request, headers=headers, timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.json()["error"]["code"] == "idempotency_key_in_use", response.text
    assert statuses[-1] == 200, statuses
    assert "x-imagegate-idempotent-replayed" not in response.headers  # generated by the new server
    assert len(fake_gemini.requests) == 2


def _ignore_errors(fn: Any) -> None:
    try:
        fn()
    except httpx.HTTPError:
        pass  # the server was killed under it
