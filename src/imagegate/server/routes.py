"""Route handlers: authenticate, parse, call the service, render. Nothing else."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..errors import AuthenticationFailed, NotFound
from ..gateway import Gateway
from ..idempotency import StoredResponse, idempotency_scope
from ..service import ImageJob
from .disconnect import until_disconnected
from .parsing import parse_edit, parse_generation
from .render import images_response, json_response, model_card


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def authenticate(request: Request) -> str | None:
    """The caller's key id, or None when the gateway has no keys at all (open mode)."""
    keys = _gateway(request).keys
    if not keys.auth_required():
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Missing API key. Send 'Authorization: Bearer YOUR_KEY'.")
    key_id = keys.verify(token.strip())
    if key_id is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return key_id


def _public_base_url(request: Request) -> str:
    """IMAGEGATE_PUBLIC_URL, else host and port; on a wildcard bind (0.0.0.0) the host the
    client used is the only address known to reach us."""
    settings = _gateway(request).settings
    if settings.public_url is None and settings.host in ("0.0.0.0", "::", ""):
        return str(request.base_url).rstrip("/")
    return settings.base_public_url


async def _run(request: Request, job: ImageJob, key_id: str | None) -> Response:
    """The request's work, abandoned as soon as its client goes away: a local engine job still
    in the queue is dropped instead of computing images nobody will read."""
    return await until_disconnected(request, _serve(request, job, key_id))


async def _serve(request: Request, job: ImageJob, key_id: str | None) -> Response:
    gateway = _gateway(request)
    job.request_id = request.scope["state"]["request_id"]
    job.key_id = key_id
    job.public_base_url = _public_base_url(request)
    job.request_base_url = str(request.base_url)  # its result URLs are read from the store when edited

    async def produce() -> StoredResponse:
        response = images_response(await gateway.service.create(job))
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        headers["x-imagegate-original-request-id"] = job.request_id
        return StoredResponse(response.status_code, headers, bytes(response.body))

    key = request.headers.get("idempotency-key")
    if key is None:
        return images_response(await gateway.service.create(job))
    scope = idempotency_scope(key, key_id, request.url.path)
    stored, replayed = await gateway.idempotency.run_once(scope, produce, gateway.settings.request_timeout_seconds)
    return _replay(stored, replayed=replayed)


def _replay(stored: StoredResponse, *, replayed: bool) -> Response:
    headers = dict(stored.headers)
    if replayed:
        headers["x-imagegate-idempotent-replayed"] = "true"
    return Response(stored.body, status_code=stored.status, headers=headers)


async def generations(request: Request) -> Response:
    key_id = await authenticate(request)
    return await _run(request, await parse_generation(request), key_id)


async def edits(request: Request) -> Response:
    key_id = await authenticate(request)
    return await _run(request, await parse_edit(request), key_id)


async def list_models(request: Request) -> Response:
    await authenticate(request)
    gateway = _gateway(request)
    body: dict[str, object] = {"object": "list", "data": [model_card(m, gateway.router) for m in gateway.router.catalog]}
    if notice := gateway.notice():
        body["notice"] = notice
    return json_response(body)


async def get_model(request: Request) -> Response:
    await authenticate(request)
    router = _gateway(request).router
    return json_response(model_card(router.model(request.path_params["model_id"]), router))


async def get_result(request: Request) -> Response:
    """Result URLs are capabilities (256-bit tokens), so they need no API key, like signed URLs."""
    stored = _gateway(request).store.get(request.path_params["name"])
    if stored is None:
        raise NotFound("This result does not exist or has expired.", code="result_not_found")
    max_age = int(min(3600, _gateway(request).settings.result_ttl_seconds))
    return FileResponse(stored.path, media_type=stored.content_type,
                        headers={"cache-control": f"private, max-age={max_age}"})


async def health(request: Request) -> Response:
    gateway = _gateway(request)
    return json_response({"status": "ok", "providers": sorted(gateway.providers)})
