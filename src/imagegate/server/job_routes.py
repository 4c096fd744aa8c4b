"""Async jobs over HTTP (jobs.py holds the jobs themselves).

    POST /images/generations, /images/edits   with `Prefer: respond-async`: 202 and the job object,
                                              `Location: <prefix>/images/jobs/{id}`
    GET  /images/jobs                         the caller's jobs, newest first (limit, after, status)
    GET  /images/jobs/{id}                    one job object
    POST /images/jobs/{id}/cancel             cancel a queued or running job (409 once finished)
    GET  /images/jobs/{id}/events             the job's event stream, replayed from the start, then
                                              followed live until the job ends

Each is served under /v1 and /openai/v1. A job belongs to the key that made it; any other key gets
the same 404 as an unknown id (open mode, no keys: everyone sees every job).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .. import webhooks
from ..errors import InvalidRequest, JobNotFound
from ..gateway import Gateway
from ..jobs import FINAL, STATUSES, Job, Renderers, list_json
from ..service import ImageJob
from .render import body_of, images_response
from .routes import authenticate
from .streaming import (
    KEEPALIVE,
    STREAM_HEADERS,
    completed_event_bytes,
    error_event_bytes,
    partial_event_bytes,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
JOB_JSON = "application/json"


def renderers() -> Renderers:
    """What the runner renders a job's answer and events with: the synchronous answer's and the
    stream's own renderers, so a job's `result` and `/events` are exactly theirs."""
    return Renderers(
        result=lambda outcome: body_of(images_response(outcome)),
        partial=partial_event_bytes,
        completed=completed_event_bytes,
        error=error_event_bytes,
    )


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _job_response(
    gateway: Gateway, job: Job, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if job.webhook_url:
        job.webhook = await asyncio.to_thread(gateway.webhooks.delivery_status, job.id)
    return Response(job.to_json(), status_code=status, headers=headers, media_type=JOB_JSON)


async def accept_job(request: Request, job: ImageJob, with_idempotency_key: bool) -> Response:
    """`Prefer: respond-async`: the request checked as far as that is cheap (model, fields,
    providers: the usual 400s stay synchronous), kept, and answered 202 at once."""
    if with_idempotency_key:
        raise InvalidRequest(
            "Prefer: respond-async cannot be combined with an Idempotency-Key: the job id already identifies "
            "the work. Send one of them.",
            param="Idempotency-Key",
        )
    gateway = _gateway(request)
    webhook_url = await _webhook_url(gateway, job)
    model = await gateway.service.check(job)
    created = await gateway.jobs.submit(job, model, webhook_url)
    # The prefix the request came on (/v1 or /openai/v1), so the client polls where it posted.
    prefix = request.url.path.rsplit("/images/", 1)[0]
    return await _job_response(
        gateway,
        created,
        202,
        {"location": f"{prefix}/images/jobs/{created.id}", "preference-applied": "respond-async"},
    )


async def _webhook_url(gateway: Gateway, job: ImageJob) -> str | None:
    """The job's `webhook_url`, if it has one, refused now rather than when the job has run: not
    an http(s) URL, a private target (webhooks.py's rules, as each delivery applies them), or no
    secret to sign with."""
    value = job.params.get("webhook_url")
    if value is None or value == "":
        return None
    url = value.strip() if isinstance(value, str) else value
    await webhooks.check_webhook_target(url, gateway.settings.allow_private_urls)
    webhooks.require_secret(gateway.webhook_secret(job.key_id))
    assert isinstance(url, str)  # check_webhook_target refuses anything else
    return url


async def _own_job(request: Request) -> Job:
    """The job named in the path, if the caller may see it; otherwise the 404 of an unknown id."""
    key_id = await authenticate(request)
    job_id = request.path_params["job_id"]
    job = await asyncio.to_thread(_gateway(request).jobs.store.get, job_id)
    if job is None or (key_id is not None and job.key_id != key_id):
        raise JobNotFound(f"No job with id '{job_id}'.")
    return job


async def get_job(request: Request) -> Response:
    return await _job_response(_gateway(request), await _own_job(request))


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    return limit


async def list_jobs(request: Request) -> Response:
    key_id = await authenticate(request)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"'status' must be one of {', '.join(STATUSES)}.", param="status")
    after = request.query_params.get("after") or None
    page = await asyncio.to_thread(
        lambda: _gateway(request).jobs.store.page(key_id, limit=_limit(request), after=after, status=status)
    )
    if page is None:
        raise InvalidRequest(f"'after' names no job of yours: {after!r}.", param="after", code="invalid_cursor")
    jobs, has_more = page
    return Response(list_json(jobs, has_more), media_type=JOB_JSON)


async def cancel_job(request: Request) -> Response:
    job = await _own_job(request)
    return await _job_response(_gateway(request), await _gateway(request).jobs.cancel(job.id))


async def job_events(request: Request) -> Response:
    job = await _own_job(request)
    gateway = _gateway(request)
    body = follow_events(gateway, job.id, gateway.settings.stream_keepalive_seconds)
    return StreamingResponse(body, media_type="text/event-stream", headers=STREAM_HEADERS)


async def follow_events(gateway: Gateway, job_id: str, keepalive_seconds: float) -> AsyncIterator[bytes]:
    """Every kept event from the first, then each new one as it is kept, until the job has ended
    and all its events are sent; a keep-alive comment whenever nothing went out for a while. The
    status is read before the events: once it is final, the events read after it are all there
    are. Whichever instance runs the job, its news wakes us (jobsignals.py); we also read again
    every `follow_poll_seconds`, for news that came with no wake-up (none without Redis)."""
    runner = gateway.jobs
    loop = asyncio.get_running_loop()
    next_seq = 0
    quiet_until = loop.time() + keepalive_seconds
    while True:
        news = runner.watch(job_id)
        status = await asyncio.to_thread(runner.store.status, job_id)
        new = await asyncio.to_thread(runner.store.event_rows, job_id, next_seq)
        for seq, data in new:
            yield data
            next_seq = seq + 1
        if new:
            quiet_until = loop.time() + keepalive_seconds
        if status is None or status in FINAL:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(runner.signals.follow_poll_seconds, quiet_until - loop.time()))):
                await news.wait()
        if loop.time() >= quiet_until:
            yield KEEPALIVE
            quiet_until = loop.time() + keepalive_seconds


JOB_ROUTES = [
    Route("/images/jobs", list_jobs, methods=["GET"]),
    Route("/images/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/images/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/images/jobs/{job_id}/events", job_events, methods=["GET"]),
]
