"""OpenTelemetry traces, only when asked for: a span per HTTP request, a child span per upstream call.

`configure(environ)` turns tracing on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and the `otel` extra is installed
(`pip install -e '.[otel]'`): spans are batched and exported over OTLP/HTTP (protobuf) to
`<endpoint>/v1/traces` (the traces-only variable is used as it is), as the OTLP exporter
specification says (opentelemetry-python's `_resolve_endpoint` does the same). Without the
variable nothing of OpenTelemetry is imported and each span helper costs one check of a global.

A request's span continues a W3C `traceparent` the client sent. Upstream call spans are children
of the request's span through the context that asyncio copies into every task the request starts;
an async job's calls, which run after its request ended, have spans of their own.

The tracer provider is the gateway's own, not OpenTelemetry's global one (which can be set once
per process): `shutdown()` flushes it when the server stops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .metrics import upstream_outcome

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from .logs import RequestRecord

log = logging.getLogger("imagegate")
SERVICE_NAME = "imagegate"
TRACES_PATH = "/v1/traces"

_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where spans go, from the standard variables; None: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return base.rstrip("/") + TRACES_PATH
    return None


def configure(environ: Mapping[str, str]) -> bool:
    """Start exporting spans if the environment asks for it; returns whether tracing is on."""
    global _provider, _tracer
    endpoint = traces_endpoint(environ)
    if endpoint is None:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (%s): no traces", exc)
        return False
    shutdown()  # a second app in this process (tests): the last one configured traces
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("imagegate")
    log.info("tracing: spans go to %s", endpoint)
    return True


def shutdown() -> None:
    """Export what is still batched, and stop."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def _parent(headers: list[tuple[bytes, bytes]]) -> Any:
    """The context of a W3C `traceparent` the client sent (None: a new trace)."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in (b"traceparent", b"tracestate")}
    if not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


@contextlib.contextmanager
def request_span(method: str, headers: list[tuple[bytes, bytes]]) -> Iterator[Span | None]:
    """The span of one HTTP request, current while it is served (None when tracing is off).
    Named when it ends (`finish_request_span`), once the route is known."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(
        method, context=_parent(headers), kind=SpanKind.SERVER, attributes={"http.request.method": method}
    ) as span:
        yield span


def finish_request_span(span: Span, method: str, route: str, status: int, record: RequestRecord) -> None:
    """What the request came to: OpenTelemetry's HTTP server names (`{method} {route}`) and ours."""
    span.update_name(f"{method} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    for name, value in (
        ("imagegate.request_id", record.request_id),
        ("imagegate.key_id", record.key_id),
        ("imagegate.model", record.model),
        ("imagegate.provider", record.provider),
    ):
        if value is not None:
            span.set_attribute(name, value)
    if status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def upstream_span(provider: str, model: str, upstream_model: str, attempt: int) -> Iterator[None]:
    """A child span around one upstream call attempt: provider, model, outcome and, when the
    upstream answered with an error, its HTTP status."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    attributes: dict[str, str | int] = {
        "imagegate.provider": provider,
        "imagegate.model": model,
        "imagegate.upstream_model": upstream_model,
        "imagegate.attempt": attempt,
    }
    with tracer.start_as_current_span(f"upstream {provider}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        try:
            yield
        except BaseException as exc:
            span.set_attribute("imagegate.outcome", upstream_outcome(exc))
            status = getattr(exc, "upstream_status", None)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            raise
        span.set_attribute("imagegate.outcome", "ok")
