"""Every request measured once: metrics, the access line and its trace span; and `/metrics`.

`ObservabilityMiddleware` runs inside `RequestIdMiddleware` (it reads the request id) and around
everything else, so a 413 from the body cap and a 500 from an unhandled error are counted too.
Routes are labelled by their template (`/v1/jobs/{job_id}`, never a job's id; `unmatched` for a
404 of no route), so the label values stay few whatever clients send. The monitoring routes
(health, metrics) are left out: a probe every few seconds would outnumber the real traffic.

What the request learns on its way (key id, model, provider, adjustments) is noted on its
`logs.RequestRecord` by the code that learns it; for an answer replayed from an idempotency
record, the provider and model come from its `x-imagegate-*` headers.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import logs, metrics, tracing
from ..errors import AuthenticationFailed
from ..gateway import Gateway

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The matched route's template under its mount (`/openai/v1` + `/images/edits`)."""
    route = scope.get("route")
    if not isinstance(route, Route):
        return UNMATCHED
    mount: str = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return mount + route.path


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, unobserved: Collection[str] = ()) -> None:
        self.app = app
        self.unobserved = frozenset(unobserved)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.unobserved:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = logs.RequestRecord(scope.get("state", {}).get("request_id"))
        logs.request_record_var.set(record)
        status = 500  # an error no handler answered: Starlette's outermost layer sends a 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if record.provider is None:  # a replayed answer: the pipeline did not run
                    _note_from_headers(record, message.get("headers", []))
            await send(message)

        metrics.request_started()
        with tracing.request_span(scope["method"], scope["headers"]) as span:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                route, seconds = route_template(scope), time.perf_counter() - started
                metrics.request_finished(route, record.model, record.provider, status, seconds)
                logs.access(record, scope["method"], route, status, seconds * 1000)
                if span is not None:
                    tracing.finish_request_span(span, scope["method"], route, status, record)


def _note_from_headers(record: logs.RequestRecord, headers: list[tuple[bytes, bytes]]) -> None:
    for name, value in headers:
        if name == b"x-imagegate-provider":
            record.provider = value.decode("latin-1")
        elif name == b"x-imagegate-model" and record.model is None:
            record.model = value.decode("latin-1")


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; open like /health unless IMAGEGATE_METRICS_TOKEN is set."""
    gateway: Gateway = request.app.state.gateway
    token = gateway.settings.metrics_token
    sent = request.headers.get("authorization", "").encode()
    if token is not None and not hmac.compare_digest(sent, f"Bearer {token}".encode()):
        raise AuthenticationFailed("/metrics needs 'Authorization: Bearer <IMAGEGATE_METRICS_TOKEN>'.")
    states = request.app.state.metric_states
    body = await anyio.to_thread.run_sync(metrics.exposition, states)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
