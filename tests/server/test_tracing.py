"""OpenTelemetry traces (OTEL_EXPORTER_OTLP_ENDPOINT): a span per images request, a child span per
upstream call attempt, exported over OTLP/HTTP to a collector on loopback that decodes them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from imagegate import tracing

from ..fakes.gemini import FakeGemini, GeminiError
from ..fakes.otlp_collector import PROTOBUF, FakeCollector, ReceivedSpan
from .serve_process import SRC

MODEL = "gemini-3-pro-image-preview"
SERVER, CLIENT = 2, 3  # opentelemetry-proto's Span.SpanKind values


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCollector]:
    with FakeCollector() as fake:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", fake.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "imagegate-test")
        yield fake
    tracing.shutdown()


def _traced_gateway(gateway_factory: Any, fake_gemini: FakeGemini, **overrides: Any) -> Any:
    return gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, **overrides)


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.name == name]


def test_a_request_span_with_a_child_span_per_upstream_attempt(
    gateway_factory: Any, fake_gemini: FakeGemini, collector: FakeCollector
) -> None:
    gateway = _traced_gateway(gateway_factory, fake_gemini, retry_attempts=2, retry_backoff_seconds=0.01)
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "down"))
    raw = gateway.client().images.with_raw_response.generate(model=MODEL, prompt="a cat")
    gateway.server.stop()  # the server's shutdown exports what is still batched
    (request,) = _by_name(collector.spans, "POST /v1/images/generations")
    assert request.kind == SERVER and request.service_name == "imagegate-test"
    assert request.attributes["http.route"] == "/v1/images/generations"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["imagegate.model"] == MODEL
    assert request.attributes["imagegate.provider"] == "gemini"
    assert request.attributes["imagegate.request_id"] == raw.headers["x-imagegate-request-id"]
    calls = _by_name(collector.spans, "upstream gemini")
    assert len(calls) == 2  # the failed attempt and its retry
    assert all(c.kind == CLIENT and c.trace_id == request.trace_id for c in calls)
    assert all(c.parent_span_id == request.span_id for c in calls)
    failed, ok = sorted(calls, key=lambda c: c.attributes["imagegate.attempt"])
    assert failed.attributes["imagegate.outcome"] == "upstream_error"
    assert failed.attributes["http.response.status_code"] == 500
    assert ok.attributes["imagegate.outcome"] == "ok"
    assert ok.attributes["imagegate.provider"] == "gemini" and ok.attributes["imagegate.model"] == MODEL
    assert set(collector.content_types) == {PROTOBUF}


def test_a_client_traceparent_is_continued(
    gateway_factory: Any, fake_gemini: FakeGemini, collector: FakeCollector
) -> None:
    gateway = _traced_gateway(gateway_factory, fake_gemini)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"  # W3C Trace Context's example
    gateway.client().images.generate(
        model=MODEL, prompt="a cat", extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    gateway.server.stop()
    (request,) = _by_name(collector.spans, "POST /v1/images/generations")
    assert (request.trace_id, request.parent_span_id) == (trace_id, parent_id)
    assert _by_name(collector.spans, "upstream gemini")[0].trace_id == trace_id


def test_monitoring_routes_have_no_spans(
    gateway_factory: Any, fake_gemini: FakeGemini, collector: FakeCollector
) -> None:
    import httpx

    gateway = _traced_gateway(gateway_factory, fake_gemini)
    for path in ("/health", "/health/live", "/metrics"):
        assert httpx.get(f"{gateway.url}{path}").status_code == 200
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401
    gateway.server.stop()
    assert [span.name for span in collector.spans] == ["GET /v1/models"]


def test_without_an_endpoint_opentelemetry_is_not_even_imported() -> None:
    code = (
        "import sys, asyncio; from imagegate.config import Settings; from imagegate.server import create_app; "
        "from imagegate import tracing; assert not tracing.configure({}); "
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_endpoint_follows_the_otlp_variables() -> None:
    assert tracing.traces_endpoint({}) is None
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    only = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}
    assert tracing.traces_endpoint(only) == "http://t/x"  # used as it is
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"}) is None
