"""Rate limits, budgets and upstream budgets end to end: the official openai SDK against a real
gateway server whose upstreams are the fakes on loopback, with stored keys that carry a policy;
in-process state and, where it says so, a real Redis shared by two gateway servers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagegate.db import Database
from imagegate.keys import KeyStore
from imagegate.limits import REFRESH_SECONDS, Limits, RedisLimitState, SharedBreaker, redis_client
from imagegate.policy import Budget, RateLimits

from ..conftest import RunningGateway
from ..fakes.fal import FakeFal
from ..fakes.gemini import FakeGemini, GeminiError

PRO = "gemini-3-pro-image-preview"  # served by gemini, then fal


def stored_key(gw: RunningGateway, **policy: Any) -> str:
    """A key in the gateway's database (as `imagegate keys create` makes it), with its policy."""
    db = Database(gw.settings.database_path)
    try:
        _, plaintext = KeyStore(db).create("limited", **policy)
    finally:
        db.close()
    return plaintext


def gemini_gateway(factory: Any, fake: FakeGemini, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **settings)
    return gw


def generate(client: openai.OpenAI) -> Any:
    return client.images.with_raw_response.generate(model=PRO, prompt="a fox", response_format="b64_json")


def test_a_key_over_its_requests_per_minute_gets_429_with_retry_after(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    client = gw.client(stored_key(gw, rate_limits=RateLimits(requests_per_minute=1)))
    generate(client)
    with pytest.raises(openai.RateLimitError) as excinfo:
        generate(client)
    error = excinfo.value
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert len(fake_gemini.requests) == 1  # the refused request went nowhere


def test_limits_of_a_key_made_through_the_admin_api(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, admin_keys="sk-test-admin")
    made = httpx.post(
        f"{gw.url}/v1/admin/keys",
        json={"name": "tenant", "rate_limits": {"requests_per_minute": 1}, "budget": {"usd_per_day": 100}},
        headers={"authorization": "Bearer sk-test-admin"},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    client = gw.client(made.json()["key"])
    generate(client)
    with pytest.raises(openai.RateLimitError) as excinfo:
        generate(client)
    assert excinfo.value.code == "rate_limit_exceeded"


def test_a_stream_is_limited_the_same_with_a_json_429(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    client = gw.client(stored_key(gw, rate_limits=RateLimits(requests_per_minute=1)))
    list(client.images.generate(model=PRO, prompt="a fox", stream=True))
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.images.generate(model=PRO, prompt="a fox", stream=True)  # refused before the stream opens
    assert excinfo.value.code == "rate_limit_exceeded" and "retry-after" in excinfo.value.response.headers
    assert len(fake_gemini.requests) == 1


def test_a_key_over_its_budget_gets_429_insufficient_quota_before_any_upstream_call(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    client = gw.client(stored_key(gw, budget=Budget(usd_per_day=0.001)))
    with pytest.raises(openai.RateLimitError) as excinfo:
        generate(client)
    assert (excinfo.value.code, excinfo.value.type) == ("insufficient_quota", "insufficient_quota")
    assert fake_gemini.requests == []


def test_a_model_off_the_keys_allow_list_is_a_403(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    client = gw.client(stored_key(gw, models=["gpt-image-1"]))
    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        generate(client)
    assert (excinfo.value.code, excinfo.value.param) == ("model_not_allowed", "model")
    assert fake_gemini.requests == []


def test_a_budget_spent_is_settled_with_the_real_cost(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    first = generate(gw.client())  # the static key has no budget: what one image of PRO costs
    price = float(first.parse().usage.model_dump()["cost"])
    client = gw.client(stored_key(gw, budget=Budget(usd_per_day=price * 2.5)))
    generate(client)
    generate(client)
    with pytest.raises(openai.RateLimitError) as excinfo:
        generate(client)  # two paid, a third does not fit
    assert excinfo.value.code == "insufficient_quota"
    assert len(fake_gemini.requests) == 3


def test_two_gateways_on_one_redis_share_a_keys_rate_limit(
    gateway_factory: Any, fake_gemini: FakeGemini, redis_url: str
) -> None:
    one = gemini_gateway(gateway_factory, fake_gemini, redis_url=redis_url)
    two = gemini_gateway(gateway_factory, fake_gemini, redis_url=redis_url)  # the same database too
    key = stored_key(one, rate_limits=RateLimits(requests_per_minute=2))
    generate(one.client(key))
    generate(two.client(key))
    with pytest.raises(openai.RateLimitError) as excinfo:
        generate(one.client(key))
    assert excinfo.value.code == "rate_limit_exceeded"


async def nothing_spent(key_id: str, since: float) -> float:
    return 0.0


def upstream_budget_config(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "imagegate.toml"
    path.write_text(f"[providers.gemini]\n{table}\n")
    return path


def test_a_provider_out_of_upstream_budget_spreads_to_the_next(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_fal: FakeFal, tmp_path: Path
) -> None:
    gw = gemini_gateway(
        gateway_factory,
        fake_gemini,
        config=upstream_budget_config(tmp_path, "images_per_minute = 1"),
        fal_api_key=fake_fal.api_key,
        fal_base_url=fake_fal.base_url,
    )
    client = gw.client()
    served_by = [generate(client).headers["x-imagegate-provider"] for _ in range(2)]
    assert served_by == ["gemini", "fal"]
    assert len(fake_gemini.requests) == 1  # never a call Gemini would answer with 429


def test_the_only_provider_out_of_upstream_budget_queues_within_the_deadline(
    gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path, redis_url: str
) -> None:
    gw = gemini_gateway(
        gateway_factory,
        fake_gemini,
        config=upstream_budget_config(tmp_path, "requests_per_minute = 1"),
        redis_url=redis_url,
        request_timeout_seconds=1.0,
    )

    async def take_the_minutes_call() -> float:  # as another instance would, through the same Redis
        limits = Limits(RedisLimitState(redis_client(redis_url)), nothing_spent, {"gemini": RateLimits(1)})
        try:
            return await limits.take_upstream("gemini", 1)
        finally:
            await limits.aclose()

    assert asyncio.run(take_the_minutes_call()) == 0
    with pytest.raises(openai.InternalServerError) as excinfo:
        generate(gw.client())
    assert excinfo.value.status_code == 504  # it waited for room until the deadline, sending nothing
    assert fake_gemini.requests == []


# --- async jobs: rate limits at submission, the budget when the job runs ---------------------------


def submit_job(gw: RunningGateway, key: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/images/generations",
        json={"model": PRO, "prompt": "a fox", "response_format": "b64_json"},
        headers={"authorization": f"Bearer {key}", "Prefer": "respond-async"},
        timeout=30,
    )


def finished_job(gw: RunningGateway, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(
            f"{gw.url}/v1/images/jobs/{job_id}", headers={"authorization": f"Bearer {key}"}, timeout=30
        ).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_an_async_job_is_rate_limited_when_submitted_and_not_again_when_it_runs(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    key = stored_key(gw, rate_limits=RateLimits(requests_per_minute=1))
    accepted = submit_job(gw, key)
    assert accepted.status_code == 202
    assert finished_job(gw, key, accepted.json()["id"])["status"] == "succeeded"
    refused = submit_job(gw, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in refused.headers


def test_an_async_job_over_budget_fails_with_insufficient_quota_without_an_upstream_call(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini)
    key = stored_key(gw, budget=Budget(usd_per_day=0.001))
    accepted = submit_job(gw, key)
    assert accepted.status_code == 202  # the budget is reserved when it runs
    job = finished_job(gw, key, accepted.json()["id"])
    assert (job["status"], job["error"]["code"]) == ("failed", "insufficient_quota")
    assert fake_gemini.requests == []


def wait_for_open_circuit(redis_url: str, provider_id: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while not client.hget(SharedBreaker._key(provider_id), "opened_at"):
            assert time.monotonic() < deadline, "the circuit was never published"
            time.sleep(0.02)
    finally:
        client.close()


def test_a_circuit_opened_on_one_gateway_is_skipped_by_the_other(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_fal: FakeFal, redis_url: str
) -> None:
    shared = {
        "redis_url": redis_url,
        "breaker_failures": 1,
        "fal_api_key": fake_fal.api_key,
        "fal_base_url": fake_fal.base_url,
    }
    one = gemini_gateway(gateway_factory, fake_gemini, **shared)
    two = gemini_gateway(gateway_factory, fake_gemini, **shared)
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "boom"))
    assert generate(one.client()).headers["x-imagegate-provider"] == "fal"  # gemini failed: its circuit opens
    assert len(fake_gemini.requests) == 1
    wait_for_open_circuit(redis_url, "gemini")  # published by the first gateway
    time.sleep(3 * REFRESH_SECONDS)  # the second reads the shared state back every REFRESH_SECONDS
    assert generate(two.client()).headers["x-imagegate-provider"] == "fal"
    assert len(fake_gemini.requests) == 1  # the second gateway did not try gemini
