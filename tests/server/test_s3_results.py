"""Results in S3 end to end: a real gateway with IMAGEGATE_RESULTS_URL=s3://<bucket>/<prefix> on
moto's S3 server (tests/backends.py), driven by the official openai SDK. Gateway result URLs are
served from the bucket; presigned ones are fetched straight from S3; expiry is the gateway's; an
edit or an idempotent replay that sends a result URL back finds its result; an unreachable S3 is
a 503 storage_unavailable."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from typing import Any

import boto3
import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import ImagesResponse

from ..backends import free_port
from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini

MODEL = "gemini-3-pro-image-preview"
PREFIX = "out/imgs"  # no "/results/" in it: presigned URLs are recognised as the store's, not by their path
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def s3(s3_env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=s3_env["IMAGEGATE_S3_ENDPOINT_URL"], region_name="us-east-1")


@pytest.fixture
def s3_gateway(gateway_factory: Any, fake_gemini: FakeGemini, s3_bucket: str, s3_env: dict[str, str]) -> Any:
    def make(**overrides: Any) -> RunningGateway:
        settings = {
            "gemini_api_key": fake_gemini.api_key,
            "gemini_base_url": fake_gemini.base_url,
            "results_url": f"s3://{s3_bucket}/{PREFIX}",
            "s3_endpoint_url": s3_env["IMAGEGATE_S3_ENDPOINT_URL"],
        }
        gw: RunningGateway = gateway_factory(**settings | overrides)
        return gw

    return make


def object_bytes(s3: Any, bucket: str, name: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{name}")["Body"].read()
    return data


def name_in(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[1]


def generate_url(client: OpenAI, prompt: str = "a lighthouse") -> str:
    url = client.images.generate(model=MODEL, prompt=prompt, response_format="url").data[0].url
    assert url is not None
    return url


def test_url_answers_are_served_by_the_gateway_from_the_bucket(
    s3_gateway: Any, s3: Any, s3_bucket: str, fake_gemini: FakeGemini
) -> None:
    gw = s3_gateway()
    url = generate_url(gw.client())
    assert url.startswith(gw.url + "/v1/results/")
    served = httpx.get(url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.content == object_bytes(s3, s3_bucket, name_in(url))
    assert served.content.startswith(b"\x89PNG")
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(served.content))
    assert head.content == b""
    local = gw.settings.data_dir / "results"
    assert not local.exists() or not any(local.iterdir())  # nothing on the local disk


def test_presigned_url_answers_are_fetched_straight_from_s3(
    s3_gateway: Any, s3: Any, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    gw = s3_gateway(results_presign=True)
    url = generate_url(gw.client())
    assert url.startswith(f"{s3_env['IMAGEGATE_S3_ENDPOINT_URL']}/{s3_bucket}/{PREFIX}/")
    assert "X-Amz-Signature=" in url
    direct = httpx.get(url)
    assert direct.status_code == 200 and direct.content == object_bytes(s3, s3_bucket, name_in(url))
    through_gateway = httpx.get(f"{gw.url}/v1/results/{name_in(url)}")  # the gateway's URL keeps working
    assert through_gateway.status_code == 200 and through_gateway.content == direct.content


def test_expired_results_are_404_through_the_gateway(s3_gateway: Any) -> None:
    gw = s3_gateway(result_ttl_seconds=0.5)
    url = generate_url(gw.client())
    assert httpx.get(url).status_code == 200
    time.sleep(0.7)
    expired = httpx.get(url)  # the object may still be in the bucket until the purge: the index says no
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "result_not_found"


def edit_with(client: OpenAI, url: str) -> ImagesResponse:
    body = {"model": MODEL, "prompt": "edit it", "response_format": "b64_json", "images": [{"image_url": url}]}
    return client.post("/images/edits", body=body, cast_to=ImagesResponse)


def sent_image(fake: FakeGemini) -> bytes:
    parts = fake.requests[-1].json["contents"][0]["parts"]
    images = [base64.b64decode((p.get("inline_data") or p["inlineData"])["data"]) for p in parts if "text" not in p]
    assert len(images) == 1
    return images[0]


@pytest.mark.parametrize("presign", [False, True])
def test_an_edit_can_reference_a_result_url(
    s3_gateway: Any, s3: Any, s3_bucket: str, fake_gemini: FakeGemini, presign: bool
) -> None:
    """Private URLs are refused (the default) and both the gateway and moto are on 127.0.0.1: a
    network fetch would be url_not_allowed, so the edit succeeds only by reading the store."""
    gw = s3_gateway(results_presign=presign, allow_private_urls=False)
    client = gw.client()
    url = generate_url(client)
    assert edit_with(client, url).data[0].b64_json
    assert sent_image(fake_gemini) == object_bytes(s3, s3_bucket, name_in(url))


def test_an_edit_with_an_expired_presigned_url_is_a_400(s3_gateway: Any, fake_gemini: FakeGemini) -> None:
    gw = s3_gateway(results_presign=True, result_ttl_seconds=1.0)
    client = gw.client()
    url = generate_url(client)
    time.sleep(1.2)
    with pytest.raises(openai.BadRequestError) as caught:
        edit_with(client, url)
    error = caught.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("result_not_found", "images")
    assert len(fake_gemini.requests) == 1  # only the generation


def post(gw: RunningGateway, body: dict[str, Any], key: str) -> httpx.Response:
    headers = AUTH | {"Idempotency-Key": key}
    return httpx.post(f"{gw.url}/v1/images/generations", json=body, headers=headers, timeout=30)


def wait_until_expired(gw: RunningGateway, name: str) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{gw.url}/v1/results/{name}", timeout=10).status_code != 404:
        assert time.monotonic() < deadline, "the result never expired"
        time.sleep(0.1)


def test_an_idempotent_replay_after_expiry_reissues_presigned_urls(
    s3_gateway: Any, s3: Any, s3_bucket: str, s3_env: dict[str, str], fake_gemini: FakeGemini
) -> None:
    gw = s3_gateway(results_presign=True, result_ttl_seconds=1.0)
    both = {"model": MODEL, "prompt": "both forms"}  # url and b64_json: re-issuable
    first = post(gw, both, "both").json()["data"][0]
    wait_until_expired(gw, name_in(first["url"]))
    again = post(gw, both, "both")
    assert again.status_code == 200 and again.headers["x-imagegate-idempotent-replayed"] == "true"
    item = again.json()["data"][0]
    assert item["b64_json"] == first["b64_json"] and item["url"] != first["url"]
    assert item["url"].startswith(s3_env["IMAGEGATE_S3_ENDPOINT_URL"])  # presigned again
    live = httpx.get(item["url"])
    assert live.status_code == 200 and live.content == base64.b64decode(first["b64_json"])
    with sqlite3.connect(gw.settings.database_path) as db:  # kept so for the next replay
        (results,) = db.execute("SELECT results FROM idempotency").fetchone()
    assert json.loads(results) == [name_in(item["url"])]
    assert len(fake_gemini.requests) == 1

    # A url-only answer cannot be re-issued: the expired presigned URL is not replayed, it is a 410.
    url_only = {"model": MODEL, "prompt": "url only", "response_format": "url"}
    hosted = post(gw, url_only, "url-only").json()["data"][0]["url"]
    wait_until_expired(gw, name_in(hosted))
    gone = post(gw, url_only, "url-only")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "idempotency_results_gone"


def test_an_unreachable_s3_is_a_503_storage_unavailable(s3_gateway: Any, fake_gemini: FakeGemini) -> None:
    gw = s3_gateway(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    client = gw.client()
    with pytest.raises(openai.APIStatusError) as caught:
        generate_url(client)
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["code"] == "storage_unavailable"
    assert caught.value.response.headers["retry-after"]
    with sqlite3.connect(gw.settings.database_path) as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0  # nothing half-stored
    # Inline answers need no storage and still work.
    assert client.images.generate(model=MODEL, prompt="inline", response_format="b64_json").data[0].b64_json


def test_an_async_jobs_presigned_results_live_the_ttl_from_the_jobs_end(
    s3_gateway: Any, s3_bucket: str, s3: Any
) -> None:
    """The job runner finds its results' names in presigned URLs too, and moves their expiry."""
    gw = s3_gateway(results_presign=True)
    body = {"model": MODEL, "prompt": "later", "response_format": "url"}
    accepted = httpx.post(
        f"{gw.url}/v1/images/generations", json=body, headers=AUTH | {"Prefer": "respond-async"}, timeout=30
    )
    assert accepted.status_code == 202
    job_url = f"{gw.url}/v1/images/jobs/{accepted.json()['id']}"
    deadline = time.monotonic() + 20
    while (job := httpx.get(job_url, headers=AUTH, timeout=10).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.05)
    assert job["status"] == "succeeded"
    url = job["result"]["data"][0]["url"]
    assert "X-Amz-Signature=" in url and httpx.get(url).content == object_bytes(s3, s3_bucket, name_in(url))
    with sqlite3.connect(gw.settings.database_path) as db:
        created_at, expires_at = db.execute(
            "SELECT created_at, expires_at FROM results WHERE token = ?", (name_in(url),)
        ).fetchone()
    assert expires_at > created_at + gw.settings.result_ttl_seconds  # from the job's end, not the put
