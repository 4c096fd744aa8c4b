"""Retries, failover, the circuit breaker, deadlines, model fallback and idempotency, end to end:
the real gateway with its real adapters against fake upstreams on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.common import Hang, MalformedJSON
from ..fakes.gemini import FakeGemini, GeminiError, PromptBlocked
from ..fakes.openai_upstream import FakeOpenAI

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}
FAST_RETRIES = {"retry_attempts": 2, "retry_backoff_seconds": 0.01, "retry_max_delay_seconds": 1.0}


def both(gateway_factory: Any, gemini: FakeGemini, openai: FakeOpenAI, **settings: Any) -> RunningGateway:
    gw: RunningGateway = gateway_factory(
        gemini_api_key=gemini.api_key,
        gemini_base_url=gemini.base_url,
        openai_api_key=openai.api_key,
        openai_base_url=openai.base_url,
        **settings,
    )
    return gw


def generate(gw: RunningGateway, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    payload = {"model": MODEL, "prompt": "p", "response_format": "b64_json"} | (body or {})
    return httpx.post(
        f"{gw.url}/v1/images/generations", json=payload, headers=AUTH | kw.pop("headers", {}), timeout=30, **kw
    )


def usage_rows(gw: RunningGateway) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(gw.settings.database_path) as db:
        return db.execute("SELECT request_id, provider, images FROM usage ORDER BY id").fetchall()


def test_a_transient_failure_is_retried_on_the_same_provider(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, **FAST_RETRIES)
    fake_gemini.enqueue(GeminiError(503, "UNAVAILABLE", "overloaded"))
    response = generate(gw)
    assert response.status_code == 200
    assert len(fake_gemini.requests) == 2
    assert response.headers["x-imagegate-provider"] == "gemini"


@pytest.mark.parametrize(
    "failure", [GeminiError(500, "INTERNAL", "boom"), MalformedJSON(), GeminiError(503, "UNAVAILABLE", "overloaded")]
)
def test_failure_moves_to_the_next_provider(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI, failure: Any
) -> None:
    gw = both(gateway_factory, fake_gemini, fake_openai)  # one attempt per provider
    fake_gemini.enqueue(failure)
    response = generate(gw)
    assert response.status_code == 200, response.text
    assert response.headers["x-imagegate-provider"] == "openai"
    assert response.json()["usage"]["provider"] == "openai"
    assert (len(fake_gemini.requests), len(fake_openai.requests)) == (1, 1)
    assert [row[1] for row in usage_rows(gw)] == ["openai"]


def test_long_retry_after_goes_to_the_next_provider_without_waiting(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    gw = both(gateway_factory, fake_gemini, fake_openai, **FAST_RETRIES)
    fake_gemini.enqueue(GeminiError(429, "RESOURCE_EXHAUSTED", "quota", retry_after_s=23))
    started = time.monotonic()
    response = generate(gw)
    assert response.status_code == 200
    assert response.headers["x-imagegate-provider"] == "openai"
    assert time.monotonic() - started < 5
    assert len(fake_gemini.requests) == 1  # not retried: 23 s is longer than the retry cap


def test_short_retry_after_is_honoured(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, **FAST_RETRIES)
    fake_gemini.enqueue(GeminiError(429, "RESOURCE_EXHAUSTED", "quota", retry_after_s=0.6))
    started = time.monotonic()
    assert generate(gw).status_code == 200
    assert time.monotonic() - started >= 0.6
    assert len(fake_gemini.requests) == 2


def test_client_errors_do_not_fail_over(gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI) -> None:
    gw = both(gateway_factory, fake_gemini, fake_openai, **FAST_RETRIES)
    fake_gemini.enqueue(PromptBlocked("SAFETY"))
    response = generate(gw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert fake_openai.requests == [] and len(fake_gemini.requests) == 1


def test_rejected_upstream_key_is_not_retried_but_fails_over(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    gw = gateway_factory(
        gemini_api_key="wrong",
        gemini_base_url=fake_gemini.base_url,
        openai_api_key=fake_openai.api_key,
        openai_base_url=fake_openai.base_url,
        **FAST_RETRIES,
    )
    response = generate(gw)
    assert response.status_code == 200 and response.headers["x-imagegate-provider"] == "openai"
    assert len(fake_gemini.requests) == 1


def test_every_provider_failing_is_a_clear_error(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    from ..fakes.openai_upstream import OpenAIError

    gw = both(gateway_factory, fake_gemini, fake_openai)
    fake_gemini.enqueue(GeminiError(503, "UNAVAILABLE", "overloaded"))
    fake_openai.enqueue(OpenAIError(500, "server error", type="server_error"))
    response = generate(gw)
    assert response.status_code == 502
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert usage_rows(gw) == []  # nothing billed


def test_circuit_breaker_skips_a_failing_provider_then_tries_it_again(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    gw = both(gateway_factory, fake_gemini, fake_openai, breaker_failures=2, breaker_cooldown_seconds=0.8)
    fake_gemini.default_behaviour = GeminiError(500, "INTERNAL", "down")
    for _ in range(2):
        assert generate(gw).headers["x-imagegate-provider"] == "openai"
    assert len(fake_gemini.requests) == 2
    for _ in range(3):  # open: gemini is not even asked
        assert generate(gw).headers["x-imagegate-provider"] == "openai"
    assert len(fake_gemini.requests) == 2
    fake_gemini.default_behaviour = None  # recovered
    time.sleep(0.9)  # half-open after the cool-down: one call goes through and closes the circuit
    assert generate(gw).headers["x-imagegate-provider"] == "gemini"
    assert generate(gw).headers["x-imagegate-provider"] == "gemini"


def test_request_never_outlives_its_deadline(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        request_timeout_seconds=0.6,
        **FAST_RETRIES,
    )
    fake_gemini.default_behaviour = Hang(30)
    started = time.monotonic()
    response = generate(gw)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 3


def test_per_provider_timeout_from_the_config_file(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text("[providers.gemini]\ntimeout = 0.3\n")
    gw = both(gateway_factory, fake_gemini, fake_openai, config=config)
    fake_gemini.enqueue(Hang(30))
    started = time.monotonic()
    response = generate(gw)
    assert response.status_code == 200 and response.headers["x-imagegate-provider"] == "openai"
    assert time.monotonic() - started < 3


def test_n_slots_fail_over_individually(gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI) -> None:
    gw = both(gateway_factory, fake_gemini, fake_openai)
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "boom"))  # one of the 3 gemini calls fails
    response = generate(gw, {"n": 3, "seed": 10})
    assert response.status_code == 200
    assert len(response.json()["data"]) == 3
    assert response.headers["x-imagegate-provider"] in ("gemini,openai", "openai,gemini")
    assert len(fake_openai.requests) == 1 and fake_openai.requests[0].json["n"] == 1
    assert usage_rows(gw)[0][2] == 3


def fallback_config(tmp_path: Path, fake_openai: FakeOpenAI) -> Path:
    """A primary model on Gemini whose fallback is a backup model on the OpenAI-compatible upstream."""
    config = tmp_path / "fallback.toml"
    config.write_text(f'''
[providers.openai]
api_key = "{fake_openai.api_key}"
base_url = "{fake_openai.base_url}"

[[models]]
id = "primary"
name = "Primary"
modes = ["t2i"]
resolution_tiers = ["1K"]
default_resolution = "1K"
fallback_model = "backup"
sizes = [{{ aspect_ratio = "1:1", resolution = "1K", width = 1024, height = 1024 }}]
price = {{ per_image = 0.05 }}
[models.parameters.allow_fallback_model]
type = "boolean"
description = "fall back when at capacity"
t2i = "supported"
edit = "not_available"
default = false
[models.providers.gemini]
upstream_model = "gemini-3-pro-image-preview"

[[models]]
id = "backup"
name = "Backup"
modes = ["t2i"]
resolution_tiers = ["1K"]
default_resolution = "1K"
sizes = [{{ aspect_ratio = "1:1", resolution = "1K", width = 1024, height = 1024 }}]
price = {{ per_image = 0.01 }}
[models.providers.openai]
upstream_model = "backup-upstream"
max_images_per_call = 4
[models.providers.openai.parameters.size]
handling = "converted"
''')
    return config


def test_allow_fallback_model_serves_another_model_at_capacity(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    gw = gateway_factory(
        config=fallback_config(tmp_path, fake_openai),
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
    )
    fake_gemini.default_behaviour = GeminiError(503, "UNAVAILABLE", "at capacity")

    refused = generate(gw, {"model": "primary"})
    assert refused.status_code == 503  # not allowed to fall back

    response = generate(gw, {"model": "primary", "allow_fallback_model": True})
    assert response.status_code == 200, response.text
    assert response.headers["x-imagegate-model"] == "backup"
    assert response.headers["x-imagegate-provider"] == "openai"
    assert response.json()["usage"]["model"] == "backup"
    assert response.json()["usage"]["cost"] == pytest.approx(0.01)
    assert "model=primary->backup (allow_fallback_model)" in response.headers["x-imagegate-adjusted"]
    assert fake_openai.requests[-1].json["model"] == "backup-upstream"
    assert "allow_fallback_model" not in fake_openai.requests[-1].json


def test_no_fallback_when_the_failure_is_not_capacity(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    gw = gateway_factory(
        config=fallback_config(tmp_path, fake_openai),
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
    )
    fake_gemini.default_behaviour = GeminiError(500, "INTERNAL", "bug")
    assert generate(gw, {"model": "primary", "allow_fallback_model": True}).status_code == 502
    assert fake_openai.requests == []


def test_idempotency_key_returns_the_first_result(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    first = generate(gateway, headers={"Idempotency-Key": "abc-1"})
    again = generate(gateway, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["x-imagegate-idempotent-replayed"] == "true"
    assert again.headers["x-imagegate-original-request-id"] == first.headers["x-request-id"]
    assert len(fake_gemini.requests) == 1
    assert len(usage_rows(gateway)) == 1  # billed once
    other = generate(gateway, headers={"Idempotency-Key": "abc-2"})
    assert other.status_code == 200 and "x-imagegate-idempotent-replayed" not in other.headers
    assert len(fake_gemini.requests) == 2


def test_concurrent_duplicates_generate_once(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    from ..fakes.common import Delay

    fake_gemini.enqueue(Delay(0.5))
    responses: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: responses.append(generate(gateway, headers={"Idempotency-Key": "same"})))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.content for r in responses}) == 1
    assert len(fake_gemini.requests) == 1 and len(usage_rows(gateway)) == 1


def test_failed_request_releases_its_idempotency_key(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "boom"))
    assert generate(gateway, headers={"Idempotency-Key": "retry-me"}).status_code == 502
    retried = generate(gateway, headers={"Idempotency-Key": "retry-me"})
    assert retried.status_code == 200 and "x-imagegate-idempotent-replayed" not in retried.headers


def test_idempotency_keys_are_per_api_key(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(api_keys="k1,k2", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    a = generate(gw, headers={"Idempotency-Key": "shared", "authorization": "Bearer k1"})
    b = generate(gw, headers={"Idempotency-Key": "shared", "authorization": "Bearer k2"})
    assert a.status_code == b.status_code == 200
    assert "x-imagegate-idempotent-replayed" not in b.headers  # another caller: its own generation
    assert len(fake_gemini.requests) == 2
    c = generate(gw, headers={"Idempotency-Key": "shared", "authorization": "Bearer k1"})
    assert c.headers["x-imagegate-idempotent-replayed"] == "true" and c.content == a.content


def test_bad_idempotency_key_is_400(gateway: RunningGateway) -> None:
    response = generate(gateway, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"


def test_errors_carry_a_request_id(gateway: RunningGateway) -> None:
    response = generate(gateway, {"size": "banana"})
    assert response.status_code == 400 and response.headers["x-request-id"].startswith("req_")
