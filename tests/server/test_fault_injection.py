"""Fault injection: 200 requests through two providers while one fails at random 30% of the time.

Every request must end, quickly, in either images or a clear OpenAI-style error; nothing may be
billed twice. The success rate is printed (run with -s to see it) for the closing note.
"""

from __future__ import annotations

import random
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from ..conftest import RunningGateway
from ..fakes.common import Hang, MalformedJSON
from ..fakes.gemini import FakeGemini, GeminiError
from ..fakes.replicate import FakeReplicate

MODEL = "gemini-3-pro-image-preview"
REQUESTS = 200
CLIENTS = 8
FAILURE_RATE = 0.3


def random_faults(count: int, seed: int) -> list[Any]:
    """`count` behaviours for the flaky upstream: 30% failures of every kind, the rest success."""
    rng = random.Random(seed)
    kinds = [
        lambda: GeminiError(500, "INTERNAL", "injected"),
        lambda: GeminiError(503, "UNAVAILABLE", "injected overload"),
        lambda: GeminiError(429, "RESOURCE_EXHAUSTED", "injected quota", retry_after_s=0.05),
        MalformedJSON,
        lambda: Hang(5),  # cut by the provider's 0.3 s timeout
    ]
    return [rng.choice(kinds)() if rng.random() < FAILURE_RATE else None for _ in range(count)]


def run_load(gw: RunningGateway) -> tuple[int, list[int], float]:
    """(successes, error statuses, slowest request in seconds) for REQUESTS requests."""
    client = gw.client(timeout=30)

    def one(i: int) -> tuple[int | None, float]:
        started = time.monotonic()
        try:
            result = client.images.generate(model=MODEL, prompt=f"load {i}", response_format="b64_json")
            assert len(result.data) == 1 and result.data[0].b64_json
            return None, time.monotonic() - started
        except openai.APIStatusError as exc:
            error = exc.response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
            return exc.status_code, time.monotonic() - started

    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(one, range(REQUESTS)))
    errors = [status for status, _ in outcomes if status is not None]
    return REQUESTS - len(errors), errors, max(seconds for _, seconds in outcomes)


def billed(gw: RunningGateway) -> list[tuple[str, int]]:
    with sqlite3.connect(gw.settings.database_path) as db:
        return db.execute("SELECT request_id, images FROM usage").fetchall()


@pytest.fixture
def gemini_timeout_config(tmp_path: Path) -> Path:
    config = tmp_path / "timeouts.toml"
    config.write_text("[providers.gemini]\ntimeout = 0.3\n")
    return config


def test_failover_keeps_every_request_alive(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate, gemini_timeout_config: Path
) -> None:
    gw = gateway_factory(
        config=gemini_timeout_config,
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        replicate_api_key=fake_replicate.api_key,
        replicate_base_url=fake_replicate.base_url,
        retry_attempts=2,
        retry_backoff_seconds=0.01,
        request_timeout_seconds=20,
    )
    fake_replicate.instant = True
    fake_gemini.enqueue(*random_faults(4 * REQUESTS, seed=20261125))
    started = time.monotonic()
    successes, errors, slowest = run_load(gw)
    elapsed = time.monotonic() - started

    rows = billed(gw)
    assert len(rows) == successes and len({r[0] for r in rows}) == len(rows)  # one bill per success
    assert sum(r[1] for r in rows) == successes
    assert slowest < 20  # none hangs
    rate = successes / REQUESTS
    print(
        f"\nfault injection with failover: {successes}/{REQUESTS} succeeded ({rate:.1%}), errors {errors}, "
        f"gemini calls {len(fake_gemini.requests)}, replicate predictions {len(fake_replicate.creates)}, "
        f"slowest {slowest:.2f} s, total {elapsed:.1f} s"
    )
    assert rate >= 0.99


def test_without_failover_the_faults_reach_the_client(
    gateway_factory: Any, fake_gemini: FakeGemini, gemini_timeout_config: Path
) -> None:
    gw = gateway_factory(
        config=gemini_timeout_config,
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        retry_attempts=1,
        request_timeout_seconds=20,
    )
    faults = random_faults(REQUESTS, seed=20261125)
    fake_gemini.enqueue(*faults)
    successes, errors, slowest = run_load(gw)
    expected_failures = sum(f is not None for f in faults)
    print(
        f"\nfault injection, one provider, no retries: {successes}/{REQUESTS} succeeded "
        f"({successes / REQUESTS:.1%}); injected failures {expected_failures}"
    )
    assert len(errors) == expected_failures  # every fault surfaces as exactly one clear error
    assert set(errors) <= {502, 503, 504}
    assert len(billed(gw)) == successes
    assert slowest < 20
