"""create_app(settings): the ASGI application, served under /v1 and /openai/v1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .. import memory, metrics, tracing
from ..config import Settings
from ..errors import ImagegateError, InvalidRequest, NotFound
from ..gateway import Gateway
from . import admin_routes, health, job_routes, openapi, page_routes, routes, usage_routes
from .disconnect import CLIENT_CLOSED_REQUEST
from .middleware import COMPRESSED, ApiCORSMiddleware, BodySizeLimitMiddleware, RequestIdMiddleware
from .observability import ObservabilityMiddleware, metrics_endpoint
from .render import error_response
from .serving import follow_master

log = logging.getLogger("imagegate")
PURGE_INTERVAL_SECONDS = 300.0

API_ROUTES = [
    Route("/images/generations", routes.generations, methods=["POST"]),
    Route("/images/edits", routes.edits, methods=["POST"]),
    Route("/models", routes.list_models, methods=["GET"]),
    Route("/models/{model_id:path}", routes.get_model, methods=["GET"]),
    Route("/results/{name}", routes.get_result, methods=["GET"]),
    *job_routes.JOB_ROUTES,
    *admin_routes.ADMIN_ROUTES,
    Route("/usage", usage_routes.get_usage, methods=["GET"]),
]
# Probes and scrapes: served, but not counted, logged or traced as requests (server/observability.py).
MONITORING_ROUTES = [
    Route("/health", routes.health, methods=["GET"]),
    Route("/health/live", health.live, methods=["GET"]),
    Route("/health/ready", health.ready, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
# Unauthenticated, like /health: the OpenAPI document and its HTML reference (server/openapi.py).
DOCS_ROUTES = [
    Route("/openapi.json", openapi.openapi_json, methods=["GET"], middleware=COMPRESSED),
    Route("/docs", openapi.docs, methods=["GET"], middleware=COMPRESSED),
    Mount("/docs/static", app=StaticFiles(directory=openapi.STATIC_DIR), name="docs-static", middleware=COMPRESSED),
]


async def _imagegate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ImagegateError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"No route {request.method} {request.url.path}."))
    if exc.status_code == 405:
        err = InvalidRequest(
            f"Method {request.method} is not allowed on {request.url.path}.", code="method_not_allowed"
        )
        err.status_code = 405
        response = error_response(err)
        # RFC 9110 section 15.5.6: a 405 carries Allow. Starlette's lists only the first route that
        # matched the path, and a path may have several (GET and POST /v1/admin/keys).
        # The scope here is the mount's (root_path /v1): match from the app's top again.
        root_path = request.scope.get("app_root_path", request.scope.get("root_path", ""))
        top: Scope = {**request.scope, "root_path": root_path, "path_params": {}}
        response.headers["allow"] = ", ".join(sorted(_allowed_methods(request.app.routes, top)))
        return response
    return error_response(InvalidRequest(str(exc.detail)))


def _allowed_methods(routes: list[BaseRoute], scope: Scope) -> set[str]:
    """The methods of every route whose path matches the request's, through mounts."""
    allowed: set[str] = set()
    for route in routes:
        match, child_scope = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            allowed |= _allowed_methods(route.routes, {**scope, **child_scope})
        elif isinstance(route, Route):
            allowed |= route.methods or set()
    return allowed


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up while its body was being read: routine, not a server error (the
    catch-all below would log a traceback twice). Nobody reads the answer."""
    log.info(
        "client disconnected before sending its whole request: %s %s request_id=%s",
        request.method,
        request.url.path,
        request.scope.get("state", {}).get("request_id", "-"),
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ImagegateError("The server had an error while processing your request."))


async def _purge_loop(gateway: Gateway) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
        try:
            await asyncio.to_thread(gateway.store.purge_expired)
            await asyncio.to_thread(gateway.idempotency.purge_expired)
            await asyncio.to_thread(gateway.jobs.store.purge_expired, gateway.settings.result_ttl_seconds)
            # Delivery records live as long as the job results they report on (from the job's end).
            await asyncio.to_thread(gateway.webhooks.purge_finished, time.time() - gateway.settings.result_ttl_seconds)
        except Exception:  # keep purging later; one failed sweep must not stop the loop
            log.exception("purging expired results failed")


def served_summary(gateway: Gateway) -> str:
    """The start-up line: which models are served, and by which providers."""
    served = [(m.id, gateway.router.available_providers(m)) for m in gateway.catalog]
    served = [(model_id, providers) for model_id, providers in served if providers]
    if not served:
        return "serving no models: no provider is configured"
    providers = sorted({p for _, ps in served for p in ps})
    models = ", ".join(f"{model_id} ({', '.join(ps)})" for model_id, ps in served)
    return f"serving {len(served)} model(s) via {', '.join(providers)}: {models}"


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            gateway = Gateway(settings)
        except ImagegateError as exc:  # a misconfigured local model: one clear line, then exit
            log.error("cannot start: %s", exc.message)
            raise
        async with gateway:
            app.state.gateway = gateway
            app.state.metric_states = metrics.StateCollector(
                gateway.router.breaker, gateway.providers, gateway.jobs.store.queued_count
            )
            traced = tracing.configure(settings.environ)  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
            if notice := gateway.notice():
                log.warning(notice)
            log.info(served_summary(gateway))
            if not gateway.keys.auth_required():
                log.warning("no API keys configured: the gateway accepts unauthenticated requests")
            try:
                await gateway.start()
            except ImagegateError as exc:
                log.error("cannot start: %s", exc.message)
                raise
            await gateway.webhooks.start()  # pending deliveries, a previous run's too, resume
            purger = asyncio.create_task(_purge_loop(gateway))
            await gateway.jobs.start(job_routes.renderers())  # queued jobs, and those a crash interrupted
            try:
                yield
            finally:
                purger.cancel()
                await gateway.jobs.stop()
                if traced:
                    await asyncio.to_thread(tracing.shutdown)  # the spans still batched go out

    return Starlette(
        routes=[
            Mount("/v1", routes=API_ROUTES),
            Mount("/openai/v1", routes=API_ROUTES),
            *MONITORING_ROUTES,
            *(page_routes.PAGE_ROUTES if settings.playground else []),  # IMAGEGATE_PLAYGROUND
            *DOCS_ROUTES,
        ],
        middleware=[
            # Browser apps (IMAGEGATE_CORS_ORIGINS); none set, no CORS headers at all.
            *([Middleware(ApiCORSMiddleware, origins=settings.cors_origin_list)] if settings.cors_origin_list else []),
            Middleware(RequestIdMiddleware),
            Middleware(ObservabilityMiddleware, unobserved=[route.path for route in MONITORING_ROUTES]),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes),
        ],
        exception_handlers={
            ImagegateError: _imagegate_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """The app factory uvicorn's worker processes import (each builds its own settings)."""
    follow_master()  # a worker must not outlive its master (even one killed by SIGKILL)
    settings = Settings()
    memory.keep_request_buffers(settings.malloc_keep_bytes)
    return create_app(settings)
