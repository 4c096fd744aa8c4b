"""Health for orchestrators: `/health/live` (the process serves) and `/health/ready` (its
dependencies answer: the database, Redis when configured, the result store). Unauthenticated,
like `/health`, which stays as it was (status and the configured providers)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..gateway import Gateway
from ..readiness import is_ready
from .render import json_response


async def live(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    checks = await gateway.readiness()
    if is_ready(checks):
        return json_response({"status": "ok", "checks": checks})
    return json_response({"status": "unavailable", "checks": checks}, 503)
