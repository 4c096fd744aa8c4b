"""A fake OpenTelemetry collector: OTLP/HTTP trace export on real loopback HTTP.

Wire format (OTLP specification, "OTLP/HTTP"): the exporter POSTs a binary protobuf
`ExportTraceServiceRequest` to `/v1/traces` with `Content-Type: application/x-protobuf`; a
success is a 200 whose body is a protobuf `ExportTraceServiceResponse` of the same content type.
The messages are opentelemetry-proto's (`opentelemetry/proto/collector/trace/v1`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .server import LoopbackServer

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    service_name: str


def _value(any_value: Any) -> Any:
    field = any_value.WhichOneof("value")
    return getattr(any_value, field) if field else None


class FakeCollector:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        self._server = LoopbackServer(Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])]))

    async def _traces(self, request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        received = []
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            service_name=str(resource.get("service.name")),
                        )
                    )
        with self._lock:
            self.spans += received
            self.content_types.append(request.headers.get("content-type", ""))
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeCollector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
