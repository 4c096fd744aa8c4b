"""Async jobs end to end: `Prefer: respond-async` through the official openai SDK (raw response),
the job routes over httpx, a fake Gemini on loopback behind a real gateway server."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import Delay, FakeGemini, GeminiError, Hang, Streamed
from ..fakes.images import detect_mime, image_size, solid_png
from .serve_process import ServeProcess

MODEL = "gemini-3-pro-image-preview"
ASYNC = {"Prefer": "respond-async"}
OTHER_KEY = "sk-test-other"
JOB_FIELDS = {
    "id",
    "object",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "model",
    "attempts",
    "result",
    "error",
}
FINAL = ("succeeded", "failed", "cancelled")


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def submit(gateway: RunningGateway | str, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    url = gateway if isinstance(gateway, str) else gateway.url
    return httpx.post(f"{url}/v1/images/generations", json=body, headers={**auth(key), **ASYNC}, timeout=30)


def get_job(gateway: RunningGateway | str, job_id: str, key: str = API_KEY) -> httpx.Response:
    url = gateway if isinstance(gateway, str) else gateway.url
    return httpx.get(f"{url}/v1/images/jobs/{job_id}", headers=auth(key), timeout=30)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_job(gateway: RunningGateway | str, job_id: str, key: str = API_KEY, statuses: tuple[str, ...] = FINAL) -> Any:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen["job"] = get_job(gateway, job_id, key).json()
        return bool(seen["job"]["status"] in statuses)

    wait_until(reached, f"job {job_id} to reach {statuses}")
    return seen["job"]


def events(gateway: RunningGateway, job_id: str, key: str = API_KEY) -> list[str]:
    with httpx.stream("GET", f"{gateway.url}/v1/images/jobs/{job_id}/events", headers=auth(key), timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(r.iter_lines())


@pytest.fixture
def gemini_gateway(gateway_factory: Any, fake_gemini: FakeGemini) -> Callable[..., RunningGateway]:
    def make(**overrides: Any) -> RunningGateway:
        gateway: RunningGateway = gateway_factory(
            gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, **overrides
        )
        return gateway

    return make


# --- accepting, running, the result ----------------------------------------------------------


def test_respond_async_answers_202_with_location_and_the_job_then_the_synchronous_answer(
    gateway: RunningGateway, client: OpenAI, fake_gemini: FakeGemini
) -> None:
    raw = client.images.with_raw_response.generate(model=MODEL, prompt="a lighthouse", n=2, extra_headers=ASYNC)
    assert raw.status_code == 202
    job = json.loads(raw.content)
    assert set(job) == JOB_FIELDS
    assert job["id"].startswith("job_") and job["object"] == "image.job" and job["model"] == MODEL
    assert job["status"] in ("queued", "in_progress") and job["result"] is None and job["error"] is None
    assert isinstance(job["created_at"], int)
    assert raw.headers["location"] == f"/v1/images/jobs/{job['id']}"
    assert raw.headers["preference-applied"] == "respond-async"

    done = wait_job(gateway, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    result = done["result"]
    sync = client.images.generate(model=MODEL, prompt="a lighthouse", n=2).model_dump()
    assert set(result) == {k for k, v in sync.items() if v is not None} | {"effective", "adjustments"}
    assert len(result["data"]) == 2
    for item in result["data"]:
        data = base64.b64decode(item["b64_json"])
        assert detect_mime(data) == "image/png" and result["size"] == "%dx%d" % image_size(data)
        assert httpx.get(item["url"], timeout=10).content == data  # hosted, as the sync answer's
    assert result["usage"]["images"] == 2 and result["effective"]["model"] == MODEL
    assert len(fake_gemini.requests) == 4  # two calls for the job, two for the synchronous request


def test_the_location_keeps_the_prefix_the_request_came_on(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.url}/openai/v1/images/generations",
        json={"model": MODEL, "prompt": "p"},
        headers={**auth(), "prefer": "wait=5, RESPOND-ASYNC ; x=1"},
        timeout=30,
    )
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/openai/v1/images/jobs/{job_id}"
    assert httpx.get(gateway.url + response.headers["location"], headers=auth(), timeout=10).json()["id"] == job_id
    wait_job(gateway, job_id)


def test_another_preference_is_answered_synchronously(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "p"},
        headers={**auth(), "prefer": "return=minimal, respond-asynchronously"},
        timeout=30,
    )
    assert response.status_code == 200 and response.json()["data"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "no-such-model", "prompt": "p"}, 404, "model"),
        ({"model": MODEL, "prompt": "p", "n": "many"}, 400, "n"),
        ({"model": MODEL, "prompt": "p", "webhook_url": "ftp://example.com/hook"}, 400, "webhook_url"),
        ({"model": MODEL, "prompt": "p", "webhook_url": 7}, 400, "webhook_url"),
    ],
)
def test_bad_requests_stay_synchronous_errors(
    gateway: RunningGateway, fake_gemini: FakeGemini, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = submit(gateway, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    listed = httpx.get(f"{gateway.url}/v1/images/jobs", headers=auth(), timeout=10).json()
    assert listed["data"] == [] and fake_gemini.requests == []


def test_async_with_an_idempotency_key_is_refused(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "p"},
        headers={**auth(), **ASYNC, "idempotency-key": "k1"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "Idempotency-Key"


def test_a_webhook_url_is_kept_on_the_job_and_not_sent_upstream(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    response = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": "https://hooks.example.com/x"})
    assert response.status_code == 202
    assert wait_job(gateway, response.json()["id"])["status"] == "succeeded"
    assert "webhook" not in json.dumps(fake_gemini.requests[0].json)
    db = sqlite3.connect(gateway.settings.database_path)
    try:
        [(url,)] = db.execute("SELECT webhook_url FROM jobs").fetchall()
    finally:
        db.close()
    assert url == "https://hooks.example.com/x"


def test_a_failing_upstream_fails_the_job_with_the_error_object(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "upstream broke"))
    job = wait_job(gateway, submit(gateway, {"model": MODEL, "prompt": "p"}).json()["id"])
    assert job["status"] == "failed" and job["result"] is None
    assert set(job["error"]) == {"message", "type", "param", "code"}
    assert job["error"]["code"] == "upstream_error" and "upstream broke" in job["error"]["message"]
    lines = events(gateway, job["id"])
    assert lines[0] == "event: error" and json.loads(lines[1].removeprefix("data: "))["error"] == job["error"]


def test_an_async_edit_keeps_its_uploads_until_it_runs(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Hang(1.0))  # the upload is long gone when the job reaches the upstream
    upload = solid_png(64, 48, (200, 30, 30))
    response = httpx.post(
        f"{gateway.url}/v1/images/edits",
        data={"model": MODEL, "prompt": "make it blue"},
        files=[("image[]", ("in.png", upload, "image/png"))],
        headers={**auth(), **ASYNC},
        timeout=30,
    )
    assert response.status_code == 202
    job = wait_job(gateway, response.json()["id"])
    assert job["status"] == "succeeded"
    parts = fake_gemini.requests[0].json["contents"][0]["parts"]
    blobs = [p.get("inline_data") or p.get("inlineData") for p in parts]
    assert [base64.b64decode(b["data"]) for b in blobs if b] == [upload]
    jobs_dir = gateway.settings.data_dir / "jobs" / job["id"]
    assert not (jobs_dir / "inputs").exists()  # deleted once the job ended
    assert "event: image_edit.completed" in events(gateway, job["id"])


def test_results_expire_a_ttl_after_the_job_ends(gemini_gateway: Callable[..., RunningGateway]) -> None:
    gateway = gemini_gateway(result_ttl_seconds=120.0)
    response = submit(gateway, {"model": MODEL, "prompt": "p", "response_format": "url"})
    job = wait_job(gateway, response.json()["id"])
    name = job["result"]["data"][0]["url"].rsplit("/", 1)[1]
    db = sqlite3.connect(gateway.settings.database_path)
    try:
        [(finished_at,)] = db.execute("SELECT finished_at FROM jobs WHERE id = ?", (job["id"],)).fetchall()
        [(created_at, expires_at)] = db.execute(
            "SELECT created_at, expires_at FROM results WHERE token = ?", (name,)
        ).fetchall()
    finally:
        db.close()
    assert finished_at > created_at  # written before the job ended ...
    assert expires_at == pytest.approx(finished_at + 120.0, abs=1e-6)  # ... kept the TTL from its end


# --- isolation and listing -------------------------------------------------------------------


def test_another_key_cannot_see_get_cancel_or_follow_a_job(gemini_gateway: Callable[..., RunningGateway]) -> None:
    gateway = gemini_gateway(api_keys=f"{API_KEY},{OTHER_KEY}")
    job_id = submit(gateway, {"model": MODEL, "prompt": "p"}).json()["id"]
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/events")):
        response = httpx.request(method, f"{gateway.url}/v1/images/jobs/{job_id}{path}", headers=auth(OTHER_KEY))
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "job_not_found"
    unknown = get_job(gateway, "job_0000", API_KEY)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
    listed = httpx.get(f"{gateway.url}/v1/images/jobs", headers=auth(OTHER_KEY), timeout=10).json()
    assert listed == {"object": "list", "data": [], "has_more": False}
    assert wait_job(gateway, job_id)["status"] == "succeeded"  # the owner still gets it
    after = httpx.get(f"{gateway.url}/v1/images/jobs", params={"after": job_id}, headers=auth(OTHER_KEY))
    assert after.status_code == 400 and after.json()["error"]["param"] == "after"


def test_the_list_is_newest_first_with_limit_after_and_status(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "upstream broke"))
    ids = []
    for _ in range(4):  # one after the other, so the first one is the one that fails
        ids.append(submit(gateway, {"model": MODEL, "prompt": "p"}).json()["id"])
        wait_job(gateway, ids[-1])

    def page(**params: Any) -> Any:
        response = httpx.get(f"{gateway.url}/v1/images/jobs", params=params, headers=auth(), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    everything = page()
    assert everything["object"] == "list" and everything["has_more"] is False
    assert [j["id"] for j in everything["data"]] == ids[::-1]
    assert all(set(j) == JOB_FIELDS for j in everything["data"])
    first = page(limit=2)
    assert [j["id"] for j in first["data"]] == [ids[3], ids[2]] and first["has_more"] is True
    second = page(limit=2, after=ids[2])
    assert [j["id"] for j in second["data"]] == [ids[1], ids[0]] and second["has_more"] is False
    assert [j["id"] for j in page(status="failed")["data"]] == [ids[0]]
    assert [j["id"] for j in page(status="succeeded", limit=1, after=ids[3])["data"]] == [ids[2]]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"status": "done"}):
        response = httpx.get(f"{gateway.url}/v1/images/jobs", params=bad, headers=auth(), timeout=10)
        assert response.status_code == 400 and response.json()["error"]["param"] == next(iter(bad))


# --- cancel and limits -----------------------------------------------------------------------


def test_cancel_a_queued_job_at_once_and_a_running_one_stops_the_upstream(
    gemini_gateway: Callable[..., RunningGateway], fake_gemini: FakeGemini
) -> None:
    gateway = gemini_gateway(job_concurrency=1)
    fake_gemini.default_behaviour = Hang(30)
    running = submit(gateway, {"model": MODEL, "prompt": "first"}).json()["id"]
    fake_gemini.wait_for_requests(1)
    queued = submit(gateway, {"model": MODEL, "prompt": "second"}).json()["id"]
    assert get_job(gateway, queued).json()["status"] == "queued"  # held behind the first (concurrency 1)

    cancelled = httpx.post(f"{gateway.url}/v1/images/jobs/{queued}/cancel", headers=auth(), timeout=10)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"] is not None

    stopped = httpx.post(f"{gateway.url}/v1/images/jobs/{running}/cancel", headers=auth(), timeout=10)
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    wait_until(lambda: fake_gemini.cancelled == 1, "the fake to see its client go away")
    assert len(fake_gemini.requests) == 1  # the queued job never ran
    assert events(gateway, running) == []  # a cancelled job's stream just ends

    again = httpx.post(f"{gateway.url}/v1/images/jobs/{running}/cancel", headers=auth(), timeout=10)
    assert again.status_code == 409
    assert set(again.json()["error"]) == {"message", "type", "param", "code"}
    assert again.json()["error"]["code"] == "job_already_finished"
    time.sleep(0.3)
    assert get_job(gateway, queued).json()["status"] == "cancelled"  # and it stays so


def test_a_full_queue_answers_429_with_retry_after(
    gemini_gateway: Callable[..., RunningGateway], fake_gemini: FakeGemini
) -> None:
    gateway = gemini_gateway(job_concurrency=1, job_queue_max=1)
    fake_gemini.default_behaviour = Hang(30)
    first = submit(gateway, {"model": MODEL, "prompt": "p"}).json()["id"]
    fake_gemini.wait_for_requests(1)  # running, so the queue is empty again
    second = submit(gateway, {"model": MODEL, "prompt": "p"})
    assert second.status_code == 202
    third = submit(gateway, {"model": MODEL, "prompt": "p"})
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
    assert third.json()["error"]["code"] == "job_queue_full"
    assert set(third.json()["error"]) == {"message", "type", "param", "code"}
    for job_id in (second.json()["id"], first):
        httpx.post(f"{gateway.url}/v1/images/jobs/{job_id}/cancel", headers=auth(), timeout=10)


def test_one_key_cannot_take_every_slot(gemini_gateway: Callable[..., RunningGateway], fake_gemini: FakeGemini) -> None:
    gateway = gemini_gateway(api_keys=f"{API_KEY},{OTHER_KEY}", job_concurrency=3, job_concurrency_per_key=1)
    fake_gemini.default_behaviour = Hang(30)
    mine = [submit(gateway, {"model": MODEL, "prompt": "p"}).json()["id"] for _ in range(2)]
    fake_gemini.wait_for_requests(1)
    other = submit(gateway, {"model": MODEL, "prompt": "p"}, key=OTHER_KEY).json()["id"]
    fake_gemini.wait_for_requests(2)
    time.sleep(0.3)  # room for a wrong third start to show
    assert [get_job(gateway, j).json()["status"] for j in mine] == ["in_progress", "queued"]
    assert get_job(gateway, other, OTHER_KEY).json()["status"] == "in_progress"
    assert len(fake_gemini.requests) == 2
    for job_id, key in ((mine[1], API_KEY), (mine[0], API_KEY), (other, OTHER_KEY)):
        httpx.post(f"{gateway.url}/v1/images/jobs/{job_id}/cancel", headers=auth(key), timeout=10)


# --- events ----------------------------------------------------------------------------------


def test_events_follow_a_running_job_and_replay_from_the_start(
    gemini_gateway: Callable[..., RunningGateway], fake_gemini: FakeGemini
) -> None:
    gateway = gemini_gateway(stream_keepalive_seconds=0.2)
    gate = threading.Event()
    fake_gemini.enqueue(Streamed(thought_images=2, gate=gate))
    job_id = submit(gateway, {"model": MODEL, "prompt": "p", "partial_images": 2}).json()["id"]
    live: list[str] = []
    with httpx.stream("GET", f"{gateway.url}/v1/images/jobs/{job_id}/events", headers=auth(), timeout=30) as r:
        lines = r.iter_lines()
        while live.count("event: image_generation.partial_image") < 2:
            live.append(next(lines))
        # Both partials came while the fake still holds the answer: followed live, not at the end.
        assert get_job(gateway, job_id).json()["status"] == "in_progress"
        gate.set()
        live.extend(lines)
    assert "event: image_generation.completed" in live
    replayed = events(gateway, job_id)
    assert [line for line in live if line != ": keep-alive"] == replayed  # the same events again
    assert replayed == events(gateway, job_id)
    partial = json.loads(replayed[replayed.index("event: image_generation.partial_image") + 1].removeprefix("data: "))
    assert partial["partial_image_index"] == 0 and detect_mime(base64.b64decode(partial["b64_json"])) == "image/png"
    completed = json.loads(replayed[replayed.index("event: image_generation.completed") + 1].removeprefix("data: "))
    job = get_job(gateway, job_id).json()
    assert completed["b64_json"] == job["result"]["data"][0]["b64_json"]


def test_events_of_a_slow_job_carry_keep_alive_comments(
    gemini_gateway: Callable[..., RunningGateway], fake_gemini: FakeGemini
) -> None:
    gateway = gemini_gateway(stream_keepalive_seconds=0.2)
    fake_gemini.enqueue(Delay(1.2))
    lines = events(gateway, submit(gateway, {"model": MODEL, "prompt": "p"}).json()["id"])
    completed = lines.index("event: image_generation.completed")
    assert lines[:completed].count(": keep-alive") >= 3  # ~1.2 s at one comment per 0.2 s of quiet
    assert all(line in (": keep-alive", "") for line in lines[:completed])


# --- a crash ---------------------------------------------------------------------------------


def test_a_job_completes_after_its_gateway_is_killed_mid_job_and_restarted(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    env = {
        "IMAGEGATE_DATA_DIR": str(tmp_path / "shared-data"),
        "IMAGEGATE_API_KEYS": API_KEY,
        "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
        "IMAGEGATE_RETRY_ATTEMPTS": "1",
        "IMAGEGATE_USAGE_WRITER": "inline",  # the usage table read below is up to date
        "GEMINI_API_KEY": fake_gemini.api_key,
        "GEMINI_BASE_URL": fake_gemini.base_url,
    }
    fake_gemini.enqueue(Hang(60))
    first = ServeProcess(tmp_path, env=env)
    with first:
        response = submit(first.url, {"model": MODEL, "prompt": "survive"})
        assert response.status_code == 202
        job_id = response.json()["id"]
        fake_gemini.wait_for_requests(1, timeout_s=20)
        assert get_job(first.url, job_id).json()["status"] == "in_progress"
        first.process.kill()  # SIGKILL: no shutdown code runs
        first.process.wait(10)
    with ServeProcess(tmp_path, env=env) as second:
        job = wait_job(second.url, job_id)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and len(job["result"]["data"]) == 1
        assert len(fake_gemini.requests) == 2
        usage = sqlite3.connect(Path(env["IMAGEGATE_DATA_DIR"]) / "imagegate.db")
        try:
            rows = usage.execute("SELECT images FROM usage").fetchall()
        finally:
            usage.close()
        assert rows == [(1,)]  # the images delivered, counted once


def test_with_two_workers_the_limit_is_global_and_a_cancel_reaches_the_worker_running_it(
    tmp_path: Path, fake_gemini: FakeGemini
) -> None:
    env = {
        "IMAGEGATE_API_KEYS": API_KEY,
        "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
        "IMAGEGATE_RETRY_ATTEMPTS": "1",
        "IMAGEGATE_JOB_CONCURRENCY": "1",
        "GEMINI_API_KEY": fake_gemini.api_key,
        "GEMINI_BASE_URL": fake_gemini.base_url,
    }
    fake_gemini.default_behaviour = Hang(60)
    with ServeProcess(tmp_path, env=env, args=("--workers", "2"), startup_timeout_s=60) as server:
        # New connections each: the two workers share the socket, so both get some of them.
        ids = [submit(server.url, {"model": MODEL, "prompt": f"p{i}"}).json()["id"] for i in range(4)]
        fake_gemini.wait_for_requests(1, timeout_s=20)
        time.sleep(1.5)  # more than a poll: room for a wrong second start on the other worker
        statuses = [get_job(server.url, job_id).json()["status"] for job_id in ids]
        assert sorted(statuses) == ["in_progress", "queued", "queued", "queued"]
        assert len(fake_gemini.requests) == 1
        for job_id in ids:  # whichever worker answers, the running job's upstream call stops
            response = httpx.post(f"{server.url}/v1/images/jobs/{job_id}/cancel", headers=auth(), timeout=10)
            assert response.status_code == 200 and response.json()["status"] == "cancelled"
        wait_until(lambda: fake_gemini.cancelled == 1, "the running job's upstream call to be cancelled")
        time.sleep(1.5)
        assert len(fake_gemini.requests) == 1  # no cancelled job ran


def test_a_browser_may_ask_for_a_job_and_read_where_it_is(gemini_gateway: Callable[..., RunningGateway]) -> None:
    origin = "https://app.example.com"
    gateway = gemini_gateway(cors_origins=origin)
    preflight = httpx.options(
        f"{gateway.url}/v1/images/generations",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, prefer",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert "prefer" in preflight.headers["access-control-allow-headers"].lower()
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "p"},
        headers={**auth(), **ASYNC, "origin": origin},
        timeout=30,
    )
    assert response.status_code == 202
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].lower().split(",")}
    assert {"location", "preference-applied"} <= exposed
    wait_job(gateway, response.json()["id"])
