"""Route handlers: authenticate, parse, call the service, render. Nothing else."""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from .. import logs
from ..errors import AuthenticationFailed, IdempotentResultsGone, NotFound
from ..gateway import Gateway
from ..idempotency import (
    StoredResponse,
    idempotency_scope,
    request_fingerprint,
    result_names,
    results_still_served,
)
from ..jobs import prefers_async
from ..service import ImageJob
from ..storage import iter_body
from .delivery import mark_usage, when_delivered
from .disconnect import until_disconnected
from .parsing import parse_edit, parse_generation
from .public_url import public_base_url
from .render import body_of, images_response, json_response, model_card, model_list
from .streaming import refuse_with_idempotency_key, stream_images, stream_requested


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
    key_id = keys.authenticate(token.strip())  # 401 saying why: wrong, revoked or expired
    logs.note_key(key_id)  # the access line names the key's id
    return key_id


def _public_base_url(request: Request) -> str:
    """IMAGEGATE_PUBLIC_URL, else the host the client called (see public_url.py)."""
    settings = _gateway(request).settings
    if settings.public_url:
        return settings.base_public_url
    return public_base_url(
        request.headers,
        scheme=request.url.scheme,
        peer=request.client.host if request.client else None,
        trusted=settings.trusted_proxy_networks,
        fallback=settings.base_public_url,
    )


async def _run(request: Request, job: ImageJob, key_id: str | None) -> Response:
    """The request's work, abandoned as soon as its client goes away: a local engine job still
    in the queue is dropped instead of computing images nobody will read."""
    return await until_disconnected(request, _serve(request, job, key_id))


async def _serve(request: Request, job: ImageJob, key_id: str | None) -> Response:
    gateway = _gateway(request)
    job.request_id = request.scope["state"]["request_id"]
    job.client_request_id = request.scope["state"].get("client_request_id")
    job.key_id = key_id
    job.public_base_url = _public_base_url(request)
    job.request_base_url = str(request.base_url)  # its result URLs are read from the store when edited

    async def produce() -> StoredResponse:
        outcome = await gateway.service.create(job)
        response = images_response(outcome)
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        headers["x-imagegate-original-request-id"] = job.request_id
        return StoredResponse(
            response.status_code,
            headers,
            body_of(response),
            result_names((image.url for image in outcome.images), gateway.store),
        )

    key = request.headers.get("idempotency-key")
    if prefers_async(request.headers.getlist("prefer")):  # an async job: 202 now (job_routes.py)
        from .job_routes import accept_job  # job_routes imports this module (authenticate)

        return await accept_job(request, job, with_idempotency_key=key is not None)
    # Each answer that carries images marks its usage row delivered once it is written (delivery.py).
    if stream_requested(job.params):
        if key is not None:
            raise refuse_with_idempotency_key()
        stream = await stream_images(gateway.service, job, gateway.settings.stream_keepalive_seconds)
        mark = mark_usage(gateway.usage, job.request_id)
        return when_delivered(request, stream, lambda: mark() if stream.images_sent else None)
    if key is None:
        return when_delivered(
            request, images_response(await gateway.service.create(job)), mark_usage(gateway.usage, job.request_id)
        )
    scope = idempotency_scope(key, key_id, job.mode)
    fingerprint = await anyio.to_thread.run_sync(request_fingerprint, job.mode, job.params, job.images, job.mask)
    stored, replayed = await gateway.idempotency.run_once(
        scope, fingerprint, produce, gateway.settings.request_timeout_seconds
    )
    # A kept answer outlives its result URLs (1 h against 24 h by default). Those still served
    # are replayed as they are: they are live. Expired ones are stored again from the answer's
    # b64_json where it has one (`both`, the default). A url-only answer's images are deleted, and
    # making them again would bill a second generation, which is what the key is there to
    # prevent. So the client gets a 410 it will not retry, telling it to use a new key.
    if replayed and not await anyio.to_thread.run_sync(results_still_served, gateway.store, stored.results):
        reissued = await anyio.to_thread.run_sync(gateway.idempotency.reissue, scope, stored, gateway.store)
        if reissued is None:
            raise IdempotentResultsGone(
                "The answer kept for this Idempotency-Key points at result URLs that have expired. Send the "
                "request with a new Idempotency-Key to generate again.",
                param="Idempotency-Key",
            )
        stored = reissued
    response = _replay(stored, replayed=replayed)
    original = stored.headers.get("x-imagegate-original-request-id")
    if stored.status == 200 and original:  # a replay delivers the first request's images (again)
        return when_delivered(request, response, mark_usage(gateway.usage, original))
    return response


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
    return json_response(model_list(_gateway(request)))


async def get_model(request: Request) -> Response:
    await authenticate(request)
    gateway = _gateway(request)
    model_id = request.path_params["model_id"]
    return json_response(
        model_card(
            gateway.router.model(model_id),
            gateway.router,
            model_id,
            default_response_format=gateway.settings.default_response_format,
        )
    )


async def get_result(request: Request) -> Response:
    """Result URLs are capabilities (256-bit tokens), so they need no API key, like signed URLs."""
    stored = _gateway(request).store.get(request.path_params["name"])
    if stored is None:
        raise _result_not_found()
    max_age = int(min(3600, _gateway(request).settings.result_ttl_seconds))
    headers = {"cache-control": f"private, max-age={max_age}", "x-content-type-options": "nosniff"}  # never sniffed
    if stored.path is not None:  # a local file: sendfile
        return FileResponse(stored.path, media_type=stored.content_type, headers=headers)
    if stored.size:
        headers["content-length"] = str(stored.size)
    if request.method == "HEAD":  # the headers only: no object read
        return Response(media_type=stored.content_type, headers=headers)
    try:  # an S3 object: opened, then streamed a chunk at a time, each read in a worker thread
        body = await anyio.to_thread.run_sync(stored.open)
    except FileNotFoundError:
        raise _result_not_found() from None
    return StreamingResponse(iter_body(body), media_type=stored.content_type, headers=headers)


def _result_not_found() -> NotFound:
    return NotFound("This result does not exist or has expired.", code="result_not_found")


async def health(request: Request) -> Response:
    gateway = _gateway(request)
    return json_response({"status": "ok", "providers": sorted(gateway.providers)})
