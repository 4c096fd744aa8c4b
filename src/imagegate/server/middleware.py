"""ASGI middleware: request ids on every response, a cap on the request body size, CORS, and
compression for the web pages.

The cap counts bytes as they stream in, so an oversized upload is refused without being held
in memory, whatever Content-Length claims.
"""

from __future__ import annotations

import json
import secrets

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLarge
from ..logs import request_id_var

# gzip for the pages, their assets and the OpenAPI document (text that shrinks about 4x), set per
# route: never on the image API, whose answers are base64 or bytes of already compressed images,
# where gzip would only add CPU to the hot path. Starlette leaves event streams and images alone.
COMPRESSED = [Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6)]


class RequestIdMiddleware:
    """Every request gets a gateway-made id (`request_id`, unique: usage rows and logs use it).
    A client's own `x-request-id` is kept beside it (`client_request_id`) and echoed back in
    `x-request-id`, so the client can match answers to its requests; clients may reuse ids, so
    it never identifies a request. `x-imagegate-request-id` always carries the gateway's id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        client_request_id = incoming if 0 < len(incoming) <= 128 else None
        request_id = "req_" + secrets.token_hex(12)
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_request_id
        echoed = (client_request_id or request_id).encode("latin-1")
        request_id_var.set(request_id)  # for log lines far from the HTTP layer (imagegate.logs)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).extend(
                    [(b"x-request-id", echoed), (b"x-imagegate-request-id", request_id.encode("latin-1"))]
                )
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."

    async def _reject(self, send: Send) -> None:
        body = json.dumps(PayloadTooLarge(self._message()).to_openai_json()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# CORS (IMAGEGATE_CORS_ORIGINS): what browser clients send, and the response headers they may read.
CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "idempotency-key",
    "x-request-id",
    "openai-organization",
    "openai-project",
    "prefer",  # Prefer: respond-async (async jobs)
)
CORS_HEADER_FAMILY = "x-stainless-"  # the openai SDKs' telemetry headers; new ones appear with SDK releases
CORS_EXPOSE_HEADERS = (
    "x-request-id",
    "x-imagegate-request-id",
    "x-imagegate-provider",
    "x-imagegate-model",
    "x-imagegate-adjusted",
    "x-imagegate-idempotent-replayed",
    "x-imagegate-original-request-id",
    "retry-after",
    "location",  # an async job's 202: where to poll it
    "preference-applied",
)


class ApiCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, also allowing any `x-stainless-*` request header. Preflights
    are answered here, before routing, so they never need an API key."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=("GET", "POST"),
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        requested = [h.strip().lower() for h in request_headers.get("access-control-request-headers", "").split(",")]
        family = [h for h in requested if h.startswith(CORS_HEADER_FAMILY)]
        if not family:
            return super().preflight_response(request_headers)
        rest = ", ".join(h for h in requested if h and not h.startswith(CORS_HEADER_FAMILY))
        raw = [(k, v) for k, v in request_headers.raw if k != b"access-control-request-headers"]
        if rest:
            raw.append((b"access-control-request-headers", rest.encode("latin-1")))
        response = super().preflight_response(Headers(raw=raw))
        if response.status_code == 200:
            allowed = response.headers.get("access-control-allow-headers")
            response.headers["access-control-allow-headers"] = ", ".join([*([allowed] if allowed else []), *family])
        return response
