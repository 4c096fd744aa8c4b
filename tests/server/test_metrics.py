"""`/metrics`: what a real gateway counts, read back through Prometheus's own text parser.

Counters are process-wide (every gateway of this test process adds to them), so each test reads
them before and after its own requests and checks the difference.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from openai import InternalServerError
from prometheus_client.parser import text_string_to_metric_families

from imagegate.metrics import StateCollector, exposition
from imagegate.providers import ImageProvider, ProviderRequest, ProviderResult
from imagegate.resilience import CircuitBreaker

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import Delay, FakeGemini, GeminiError

MODEL = "gemini-3-pro-image-preview"
GENERATIONS = "/v1/images/generations"


def scrape(gateway: RunningGateway | str, **headers: str) -> str:
    url = gateway if isinstance(gateway, str) else gateway.url
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels (0 when absent: a counter not yet touched)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_an_images_request_is_counted_by_route_model_provider_and_status(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    labels = {"route": GENERATIONS, "model": MODEL, "provider": "gemini", "status": "200"}
    before = scrape(gateway)
    result = gateway.client().images.generate(model=MODEL, prompt="a cat", n=2)
    after = scrape(gateway)
    assert value(after, "imagegate_requests_total", **labels) - value(before, "imagegate_requests_total", **labels) == 1
    timed = {"route": GENERATIONS, "status": "200"}
    count = "imagegate_request_duration_seconds_count"
    assert value(after, count, **timed) - value(before, count, **timed) == 1
    top = "imagegate_request_duration_seconds_bucket"
    assert value(after, top, le="600.0", **timed) - value(before, top, le="600.0", **timed) == 1
    # images and cost come from the usage record: what the answer's usage says
    assert result.usage is not None
    cost = result.usage.model_dump()["cost"]  # the SDK keeps imagegate's extra usage fields
    made = {"model": MODEL, "provider": "gemini"}
    assert value(after, "imagegate_images_total", **made) - value(before, "imagegate_images_total", **made) == 2
    spent = value(after, "imagegate_cost_usd_total", **made) - value(before, "imagegate_cost_usd_total", **made)
    assert spent == pytest.approx(cost) and cost > 0
    upstream = {"provider": "gemini", "outcome": "ok"}
    calls = value(after, "imagegate_upstream_requests_total", **upstream)
    assert calls - value(before, "imagegate_upstream_requests_total", **upstream) == 2  # n=2: two calls
    histogram = "imagegate_upstream_duration_seconds_count"
    assert value(after, histogram, provider="gemini") - value(before, histogram, provider="gemini") == 2


def test_a_streamed_answer_is_counted_once_with_its_provider(gateway: RunningGateway) -> None:
    labels = {"route": GENERATIONS, "model": MODEL, "provider": "gemini", "status": "200"}
    before = value(scrape(gateway), "imagegate_requests_total", **labels)
    events = list(gateway.client().images.generate(model=MODEL, prompt="a cat", stream=True))
    assert events[-1].type == "image_generation.completed"
    assert value(scrape(gateway), "imagegate_requests_total", **labels) - before == 1


def test_a_replayed_idempotent_answer_keeps_its_model_and_provider(gateway: RunningGateway) -> None:
    labels = {"route": GENERATIONS, "model": MODEL, "provider": "gemini", "status": "200"}
    before = value(scrape(gateway), "imagegate_requests_total", **labels)
    client = gateway.client()
    for _ in range(2):
        raw = client.images.with_raw_response.generate(
            model=MODEL, prompt="a cat", extra_headers={"Idempotency-Key": "metrics-replay-1"}
        )
    assert raw.headers["x-imagegate-idempotent-replayed"] == "true"  # the second answer ran no pipeline
    assert value(scrape(gateway), "imagegate_requests_total", **labels) - before == 2


def test_errors_are_counted_with_their_status_and_an_unknown_model_is_no_label(gateway: RunningGateway) -> None:
    bad = {"route": GENERATIONS, "model": MODEL, "provider": "-", "status": "400"}
    unknown = {"route": GENERATIONS, "model": "-", "provider": "-", "status": "404"}
    before = scrape(gateway)
    headers = {"authorization": f"Bearer {API_KEY}"}
    assert (
        httpx.post(
            f"{gateway.url}{GENERATIONS}", json={"model": MODEL, "prompt": "x", "n": 0}, headers=headers
        ).status_code
        == 400
    )
    # A model the catalog does not know is not a label value: clients cannot grow the series.
    made_up = {"model": "made-up-model-123", "prompt": "x"}
    assert httpx.post(f"{gateway.url}{GENERATIONS}", json=made_up, headers=headers).status_code == 404
    after = scrape(gateway)
    for labels in (bad, unknown):
        assert (
            value(after, "imagegate_requests_total", **labels) - value(before, "imagegate_requests_total", **labels)
            == 1
        )
    assert 'model="made-up-model-123"' not in after


def test_routes_are_templates_not_raw_paths(gateway: RunningGateway) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    for job_id in ("job_does_not_exist_1", "job_does_not_exist_2"):
        assert httpx.get(f"{gateway.url}/openai/v1/images/jobs/{job_id}", headers=headers).status_code == 404
    assert httpx.get(f"{gateway.url}/no/such/route/{API_KEY[:3]}").status_code == 404
    text = scrape(gateway)
    template = {"route": "/openai/v1/images/jobs/{job_id}", "model": "-", "provider": "-", "status": "404"}
    assert value(text, "imagegate_requests_total", **template) >= 2
    assert value(text, "imagegate_requests_total", route="unmatched", model="-", provider="-", status="404") >= 1
    assert "job_does_not_exist" not in text and "/no/such/route" not in text
    # the monitoring routes are served but not counted
    assert 'route="/metrics"' not in text and 'route="/health' not in text


def test_every_upstream_attempt_counts_retries_included(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        retry_attempts=3,
        retry_backoff_seconds=0.01,
    )
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "down"), GeminiError(429, "RESOURCE_EXHAUSTED", "slow down"))
    before = scrape(gateway)
    gateway.client().images.generate(model=MODEL, prompt="a cat")
    after = scrape(gateway)

    def delta(outcome: str) -> float:
        labels = {"provider": "gemini", "outcome": outcome}
        return value(after, "imagegate_upstream_requests_total", **labels) - value(
            before, "imagegate_upstream_requests_total", **labels
        )

    assert (delta("upstream_error"), delta("upstream_rate_limited"), delta("ok")) == (1, 1, 1)


def test_in_flight_requests_and_an_open_circuit_show_while_they_last(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, breaker_failures=1
    )
    assert value(scrape(gateway), "imagegate_circuit_breaker_state", provider="gemini") == 0  # closed
    idle = value(scrape(gateway), "imagegate_requests_in_flight")
    fake_gemini.enqueue(Delay(2.0))
    client = gateway.client()
    thread = threading.Thread(target=lambda: client.images.generate(model=MODEL, prompt="slow"), daemon=True)
    thread.start()
    fake_gemini.wait_for_requests(1, timeout_s=10)
    assert value(scrape(gateway), "imagegate_requests_in_flight") == idle + 1
    thread.join(15)
    assert value(scrape(gateway), "imagegate_requests_in_flight") == idle
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "down"))
    with pytest.raises(InternalServerError):
        client.images.generate(model=MODEL, prompt="a cat")
    assert value(scrape(gateway), "imagegate_circuit_breaker_state", provider="gemini") == 2  # open


def test_the_job_queue_depth_is_read_from_the_jobs_table(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    text = scrape(gateway)
    assert value(text, "imagegate_jobs_queued") == 0
    assert "imagegate_local_engine_queued_images" not in names(text)  # no local provider here
    store = gateway.server.app.state.gateway.jobs.store
    store.db.execute(
        "INSERT INTO jobs (id, key_id, status, model, mode, request, created_at) VALUES "
        "('job_m1', NULL, 'queued', ?, 'generate', '{}', 0), ('job_m2', NULL, 'queued', ?, 'generate', '{}', 0)",
        (MODEL, MODEL),
    )
    states: StateCollector = gateway.server.app.state.metric_states
    states.queued_jobs._seconds = 0  # no cache: the test reads the new rows at once
    assert value(scrape(gateway), "imagegate_jobs_queued") == 2


def test_a_metrics_token_guards_the_scrape(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = gateway_factory(metrics_token="scrape-secret")
    denied = httpx.get(f"{gateway.url}/metrics")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gateway.url}/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert "imagegate_requests_in_flight" in scrape(gateway, authorization="Bearer scrape-secret")


# --- the scrape-time states, without a server -----------------------------------------------


class QueueingProvider(ImageProvider):
    """A provider with a queue of its own, as the local engine has."""

    provider_id = "queueing"

    def __init__(self, queued: int) -> None:
        self.queued = queued

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        raise NotImplementedError

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        raise NotImplementedError

    def queued_images(self) -> int | None:
        return self.queued


def test_states_report_breakers_local_queues_and_a_cached_job_count() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=3600)
    breaker.record_failure("b")
    breaker.record_failure("b")
    reads: list[int] = []

    def queued_jobs() -> int:
        reads.append(1)
        return 7

    states = StateCollector(breaker, {"a": QueueingProvider(3), "b": QueueingProvider(4)}, queued_jobs)
    text = exposition(states).decode()
    assert value(text, "imagegate_circuit_breaker_state", provider="a") == 0
    assert value(text, "imagegate_circuit_breaker_state", provider="b") == 2
    assert value(text, "imagegate_local_engine_queued_images") == 7
    assert value(text, "imagegate_jobs_queued") == 7
    exposition(states)
    assert len(reads) == 1  # a second scrape within the second reads the cached count
    breaker.cooldown = 0  # the cool-down is over: half-open
    assert value(exposition(states).decode(), "imagegate_circuit_breaker_state", provider="b") == 1


def test_the_metric_names_outside_tests_rely_on_are_exposed(gateway: RunningGateway) -> None:
    gateway.client().images.generate(model=MODEL, prompt="a cat")
    present = names(scrape(gateway))
    for name in (
        "imagegate_requests_total",
        "imagegate_request_duration_seconds_bucket",
        "imagegate_upstream_requests_total",
        "imagegate_upstream_duration_seconds_bucket",
        "imagegate_images_total",
        "imagegate_cost_usd_total",
        "imagegate_requests_in_flight",
        "imagegate_circuit_breaker_state",
        "imagegate_jobs_queued",
    ):
        assert name in present, name
