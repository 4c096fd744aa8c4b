"""Two gateway instances over the shared backends (real PostgreSQL, Redis and S3): whatever one
instance made, the other answers the moment it exists; and a kill -9 of one under load loses no
usage and no accepted job."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from standardwebhooks import Webhook

from ..fakes.common import Delay
from ..fakes.gemini import FakeGemini
from ..fakes.webhook_receiver import WebhookReceiver
from .cluster import ADMIN_KEY, API_KEY, WEBHOOK_SECRET, Cluster

MODEL = "gemini-3-pro-image-preview"
ASYNC = {"Prefer": "respond-async"}


def generate(cluster: Cluster, index: int, **extra: Any) -> httpx.Response:
    with cluster.http(index) as http:
        return http.post(
            "/v1/images/generations",
            json={"model": MODEL, "prompt": "a lighthouse", "response_format": "b64_json", **extra.pop("body", {})},
            **extra,
        )


def wait_job(cluster: Cluster, index: int, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with cluster.http(index) as http:
        while time.monotonic() < deadline:
            job = http.get(f"/v1/images/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return dict(job)
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {cluster.logs()}")


def test_an_idempotent_retry_on_the_other_instance_replays_the_first_answer(
    cluster: Cluster, fake_gemini: FakeGemini
) -> None:
    headers = {"Idempotency-Key": "retry-" + uuid.uuid4().hex}
    first = generate(cluster, 0, headers=headers)
    assert first.status_code == 200, first.text
    again = generate(cluster, 1, headers=headers)
    assert again.status_code == 200 and again.headers.get("x-imagegate-idempotent-replayed") == "true"
    assert again.json()["data"] == first.json()["data"]
    assert len(fake_gemini.requests) == 1  # one generation, paid once


def test_an_idempotency_key_sent_to_both_at_once_generates_once(cluster: Cluster, fake_gemini: FakeGemini) -> None:
    fake_gemini.default_behaviour = Delay(1.0)  # both arrive while the first is generating
    headers = {"Idempotency-Key": "race-" + uuid.uuid4().hex}
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda i=i: answers.append(generate(cluster, i, headers=headers))) for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["data"] == answers[1].json()["data"]
    assert len(fake_gemini.requests) == 1


def test_a_job_made_on_one_instance_is_read_on_the_other(cluster: Cluster) -> None:
    with cluster.http(0) as http:
        accepted = http.post(
            "/v1/images/generations",
            json={"model": MODEL, "prompt": "a job", "response_format": "b64_json"},
            headers=ASYNC,
        )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    with cluster.http(1) as http:
        seen = http.get(f"/v1/images/jobs/{job_id}")
    assert seen.status_code == 200 and seen.json()["id"] == job_id  # the moment it exists
    job = wait_job(cluster, 1, job_id)
    assert job["status"] == "succeeded" and len(job["result"]["data"]) == 1
    assert base64.b64decode(job["result"]["data"][0]["b64_json"]).startswith(b"\x89PNG")


class Load:
    """Clients sending images requests and async jobs to the instances in turn until stopped,
    each request with its own x-request-id, so the usage ledger can be checked against what the
    clients received."""

    def __init__(self, cluster: Cluster, clients: int) -> None:
        self.cluster = cluster
        self.received: dict[str, int] = {}  # client request id -> images received
        self.sent: list[str] = []
        self.jobs: list[str] = []  # ids of the jobs accepted (202)
        self.down: set[int] = set()  # instances not to send to (killed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, number: int) -> None:
        turn = number
        while not self._stop.is_set():
            turn += 1
            index = turn % len(self.cluster.instances)
            if index in self.down:
                index = (index + 1) % len(self.cluster.instances)
            request_id = f"load-{uuid.uuid4().hex}"
            with self._lock:
                self.sent.append(request_id)
            as_job = turn % 5 == 0
            try:
                with httpx.Client(base_url=self.cluster.url(index), timeout=30.0) as http:
                    response = http.post(
                        "/v1/images/generations",
                        json={"model": MODEL, "prompt": f"load {request_id}", "response_format": "b64_json"},
                        headers={
                            "Authorization": f"Bearer {API_KEY}",
                            "x-request-id": request_id,
                            **(ASYNC if as_job else {}),
                        },
                    )
            except httpx.HTTPError:
                continue  # the instance died under this request: the client saw nothing
            with self._lock:
                if response.status_code == 202:
                    self.jobs.append(response.json()["id"])
                elif response.status_code == 200:
                    self.received[request_id] = len(response.json()["data"])


def test_kill_9_of_one_instance_under_load_loses_no_usage_and_no_job(cluster: Cluster, fake_gemini: FakeGemini) -> None:
    fake_gemini.default_behaviour = Delay(0.2)  # requests in flight when the kill lands
    with Load(cluster, clients=6) as load:
        time.sleep(3.0)
        load.down.add(0)
        cluster.kill(0)
        time.sleep(2.0)
    received_before_restart = dict(load.received)
    assert received_before_restart and load.jobs, cluster.logs()
    assert len(load.sent) > len(load.received) + len(load.jobs)  # the kill cut requests short: it hit under load
    cluster.restart(0)  # on its data dir: its journal of usage not yet in the database is replayed
    for job_id in load.jobs:  # every accepted job ends, taken over from the dead instance if need be
        job = wait_job(cluster, 1, job_id)
        assert job["status"] == "succeeded", job

    def ledger() -> dict[str, list[int]]:
        rows = cluster.sql("SELECT client_request_id, images FROM usage WHERE client_request_id IS NOT NULL")
        by_id: dict[str, list[int]] = {}
        for client_id, images in rows:
            by_id.setdefault(client_id, []).append(int(images))
        return by_id

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not set(received_before_restart) <= set(ledger()):
        time.sleep(0.2)
    rows = ledger()
    missing = [rid for rid in received_before_restart if rid not in rows]
    assert not missing, f"{len(missing)} answered requests have no usage row\n{cluster.logs()}"
    for request_id, images in received_before_restart.items():
        assert rows[request_id] == [images], (request_id, rows[request_id])  # once, with its images
    cut_short = len(load.sent) - len(received_before_restart) - len(load.jobs)
    (undelivered,) = cluster.sql("SELECT COUNT(*) FROM usage WHERE delivered = 0")[0]
    assert undelivered <= cut_short  # only answers that died with the instance are marked undelivered
    twice = cluster.sql("SELECT request_id FROM usage GROUP BY request_id HAVING COUNT(*) > 1")
    assert twice == []
    jobs_counted = cluster.sql("SELECT COUNT(*) FROM jobs WHERE id = ANY(%s) AND usage_counted = 1", (load.jobs,))[0][0]
    assert jobs_counted == len(load.jobs)
    (recorded_images,) = cluster.sql("SELECT COALESCE(SUM(images), 0) FROM usage")[0]
    assert recorded_images <= len(fake_gemini.requests)  # nothing recorded that was never called


@pytest.mark.parametrize("index", [0, 1])
def test_both_instances_share_the_stored_keys(cluster: Cluster, index: int) -> None:
    from imagegate.db import PostgresDatabase
    from imagegate.keys import KeyStore

    database = PostgresDatabase(cluster.database_url, cluster.tmp_path / "cli" / "imagegate.db")
    try:
        record, key = KeyStore(database).create("shared")
        client = cluster.client(index, api_key=key)
        assert (
            len(client.images.generate(model=MODEL, prompt="with a stored key", response_format="b64_json").data) == 1
        )
        KeyStore(database).revoke(record.id)
    finally:
        database.close()
    time.sleep(1.0)  # revocation is promised within 1 s on every instance (keys.CACHE_SECONDS)
    with pytest.raises(openai.AuthenticationError):
        cluster.client(1 - index, api_key=key).images.generate(
            model=MODEL, prompt="revoked", response_format="b64_json"
        )


def test_a_jobs_webhook_is_sent_once_and_its_delivery_shown_by_either_instance(cluster: Cluster) -> None:
    with WebhookReceiver() as receiver:
        with cluster.http(0) as http:
            accepted = http.post(
                "/v1/images/generations",
                json={"model": MODEL, "prompt": "hooked", "response_format": "b64_json", "webhook_url": receiver.url},
                headers=ASYNC,
            )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        try:
            [hook] = receiver.wait_for(1, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from exc
        payload = Webhook(WEBHOOK_SECRET).verify(hook.body, hook.headers)
        assert payload["data"]["id"] == job_id and payload["type"] == "image.job.succeeded"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shown = wait_job(cluster, 1, job_id)["webhook"]
            if shown["delivered_at"] is not None:
                break
            time.sleep(0.1)
        assert shown["attempts"] == 1 and shown["last_status"] == 200
        time.sleep(0.5)
        assert len(receiver.received) == 1  # one delivery, though two senders watch the table


def test_a_result_stored_by_one_instance_is_served_by_the_other(cluster: Cluster) -> None:
    answer = cluster.client(0).images.generate(model=MODEL, prompt="hosted", response_format="url")
    url = answer.data[0].url
    assert url is not None and url.startswith(cluster.url(0))
    other = url.replace(cluster.url(0), cluster.url(1), 1)  # the same result, asked of the other instance
    served = httpx.get(other, timeout=30)
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    assert served.headers["content-type"] == "image/png"
    objects = cluster.sql("SELECT path FROM results")
    assert len(objects) == 1 and objects[0][0].startswith("results/")  # an S3 key, not a local file


def admin_key(cluster: Cluster, **policy: Any) -> str:
    """A stored key made through instance 0's admin API; returns the key."""
    with cluster.http(0, api_key=ADMIN_KEY) as http:
        made = http.post("/v1/admin/keys", json={"name": "limited", **policy})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def test_a_rate_limit_holds_across_both_instances(cluster: Cluster, fake_gemini: FakeGemini) -> None:
    key = admin_key(cluster, rate_limits={"requests_per_minute": 3})
    for index in (0, 1, 0):  # three requests, spread over both instances: the whole allowance
        cluster.client(index, api_key=key).images.generate(model=MODEL, prompt="ok", response_format="b64_json")
    for index in (1, 0):
        with pytest.raises(openai.RateLimitError) as refused:
            cluster.client(index, api_key=key).images.generate(model=MODEL, prompt="over", response_format="b64_json")
        assert refused.value.code == "rate_limit_exceeded"
        assert float(refused.value.response.headers["retry-after"]) > 0
    assert len(fake_gemini.requests) == 3  # refused requests never reach the upstream


def test_a_budget_holds_across_both_instances(cluster: Cluster, fake_gemini: FakeGemini) -> None:
    priced = cluster.client(0).images.generate(model=MODEL, prompt="price", response_format="b64_json")
    assert priced.usage is not None
    cost = float(priced.usage.model_extra["cost"])
    assert cost > 0
    key = admin_key(cluster, budget={"usd_per_day": round(cost * 2.5, 6)})  # room for two requests
    for index in (0, 1):
        cluster.client(index, api_key=key).images.generate(model=MODEL, prompt="ok", response_format="b64_json")
    calls = len(fake_gemini.requests)
    for index in (0, 1):
        with pytest.raises(openai.RateLimitError) as refused:
            cluster.client(index, api_key=key).images.generate(model=MODEL, prompt="over", response_format="b64_json")
        assert refused.value.code == "insufficient_quota"
    assert len(fake_gemini.requests) == calls  # decided before any upstream call


@pytest.mark.parametrize("index", [0, 1])
def test_each_instance_is_ready_on_the_shared_backends_and_counts_its_requests(cluster: Cluster, index: int) -> None:
    ready = httpx.get(f"{cluster.url(index)}/health/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "results": "ok"}
    cluster.client(index).images.generate(model=MODEL, prompt="counted", response_format="b64_json")
    deadline = time.monotonic() + 5  # counted as the answer has gone out: maybe a moment after the client has it
    while True:
        metrics = httpx.get(f"{cluster.url(index)}/metrics", timeout=30).text
        line = next(
            (r for r in metrics.splitlines() if r.startswith("imagegate_requests_total{") and 'status="200"' in r), ""
        )
        if line or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'route="/v1/images/generations"' in line and line.endswith(" 1.0"), metrics[:2000]


def test_the_usage_api_of_either_instance_sums_both(cluster: Cluster) -> None:
    key = admin_key(cluster)
    for index in (0, 1):
        cluster.client(index, api_key=key).images.generate(model=MODEL, prompt="billed", n=index + 1)
    cluster.client(0).images.generate(model=MODEL, prompt="another key's", response_format="b64_json")
    deadline = time.monotonic() + 10
    while True:  # each instance's journal reaches the ledger within its flush period
        with cluster.http(1, api_key=ADMIN_KEY) as http:
            usage = http.get("/v1/usage", params={"group_by": "key"}).json()
        rows = {row["key_name"]: row for row in usage["data"]}
        if usage["total"]["images"] == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert usage["total"]["images"] == 4 and usage["total"]["requests"] == 3
    assert (rows["limited"]["requests"], rows["limited"]["images"]) == (2, 3)
    assert rows["limited"]["cost"] > 0 and rows["limited"]["currency"] == "USD"
    with cluster.http(0, api_key=key) as http:  # a key that is not an admin sees its own rows only
        own = http.get("/v1/usage", params={"group_by": "model"}).json()
    assert own["total"]["images"] == 3


def test_a_job_running_on_one_instance_is_followed_live_on_the_other(cluster: Cluster, fake_gemini: FakeGemini) -> None:
    fake_gemini.default_behaviour = Delay(1.5)  # the follower on instance 1 is waiting before it ends
    with cluster.http(0) as http:
        accepted = http.post(
            "/v1/images/generations",
            json={"model": MODEL, "prompt": "followed", "response_format": "b64_json"},
            headers=ASYNC,
        )
    job_id = accepted.json()["id"]
    with cluster.http(1) as http, http.stream("GET", f"/v1/images/jobs/{job_id}/events") as events:
        assert events.status_code == 200
        assert http.get(f"/v1/images/jobs/{job_id}").json()["status"] in ("queued", "in_progress")
        lines = [line for line in events.iter_lines() if line]
    completed = json.loads(lines[lines.index("event: image_generation.completed") + 1].removeprefix("data: "))
    job = wait_job(cluster, 1, job_id)
    assert completed["b64_json"] == job["result"]["data"][0]["b64_json"]
