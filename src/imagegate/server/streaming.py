"""`stream: true`: an images request answered as OpenAI's image event stream (text/event-stream).

The request runs through the same pipeline as any other; this module only listens to its events
(pipeline.PipelineEvent) and renders them:

    event: image_generation.partial_image      one per interim image (partial_images, where the
    data: {"type": ..., "b64_json": ...}         provider sends them: Gemini's thought images)
    event: image_generation.completed          one per final image, after the pipeline finished,
    data: {"type": ..., "usage": ...}            with imagegate's `effective` and `adjustments`
    : keep-alive                               an SSE comment whenever nothing else went out for
                                                 IMAGEGATE_STREAM_KEEPALIVE_SECONDS
    event: error                               a failure once the stream has begun (OpenAI's
    data: {"error": {...}}                       error object), then the stream ends

Edits use `image_edit.*`. Until the request reaches its upstream calls (validation, planning,
loading inputs) nothing is streamed, so bad input still gets its usual 4xx JSON error. A client
that disconnects cancels the request, as without streaming (Starlette cancels the body iterator;
the pipeline records what was paid for). Sources for the event names and fields: OpenAI's API
reference for image streaming and openai-python's `types/image_gen_*_event.py` /
`image_edit_*_event.py` (../shared/spec/providers.md 1.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from .. import jsonio
from ..errors import ImagegateError, InvalidRequest
from ..outputs import OutputImage
from ..params import is_true
from ..service import ImageJob, ImageService, ImagesOutcome, PipelineEvent
from .render import adjustment_list, splice, usage_object

log = logging.getLogger("imagegate")

KEEPALIVE = b": keep-alive\n\n"
# What the SSE layer asks of proxies: no caching, no buffering (nginx honours X-Accel-Buffering).
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def stream_requested(params: dict[str, Any]) -> bool:
    """Whether the client asked for a stream (JSON true or a form field "true"); a value that is
    neither is left to the pipeline's validation, which answers its 400."""
    return is_true(params.get("stream"))


def refuse_with_idempotency_key() -> InvalidRequest:
    return InvalidRequest(
        "stream cannot be combined with an Idempotency-Key: a stream is not replayed. Send one of them.",
        param="stream",
    )


class EventStream(StreamingResponse):
    """The stream's answer; `images_sent` once its last completed event was yielded (the images
    are in the stream, not an error event)."""

    images_sent = False


async def stream_images(service: ImageService, job: ImageJob, keepalive_seconds: float) -> EventStream:
    """Run the request and answer with its event stream once it reaches its upstream calls; an
    error before that is raised as usual (a JSON error answer)."""
    events: asyncio.Queue[PipelineEvent] = asyncio.Queue()
    dispatching = asyncio.Event()

    def listen(event: PipelineEvent) -> None:
        events.put_nowait(event)
        if event.kind == "stage_started" and event.stage == "dispatch":
            dispatching.set()

    task = asyncio.ensure_future(service.create(job, on_event=listen))
    waiter = asyncio.ensure_future(dispatching.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _stop(task)
        raise
    finally:
        waiter.cancel()
    if not dispatching.is_set():
        task.result()  # failed before any upstream call: raised here, answered as usual
    prefix = "image_edit" if job.mode == "edit" else "image_generation"
    answer: list[EventStream] = []
    body = _event_stream(task, events, prefix, keepalive_seconds, job.request_id, answer)
    answer.append(EventStream(body, media_type="text/event-stream", headers=STREAM_HEADERS))
    return answer[0]


async def _event_stream(
    task: asyncio.Future[ImagesOutcome],
    events: asyncio.Queue[PipelineEvent],
    prefix: str,
    keepalive_seconds: float,
    request_id: str,
    answer: list[EventStream],
) -> AsyncIterator[bytes | memoryview]:
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + keepalive_seconds  # when a keep-alive is due, if nothing else went out
    try:
        while not (task.done() and events.empty()):
            getter: asyncio.Future[Any] = asyncio.ensure_future(events.get())
            running: set[asyncio.Future[Any]] = {getter, task}
            await asyncio.wait(
                running, timeout=max(0.0, quiet_until - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            if not getter.done():
                getter.cancel()
                if not task.done():
                    yield KEEPALIVE
                    quiet_until = loop.time() + keepalive_seconds
                continue
            event = getter.result()
            if event.kind == "image_partial" and event.image is not None and event.index is not None:
                for piece in _partial_event(prefix, event.index, event.image):
                    yield piece
                quiet_until = loop.time() + keepalive_seconds
        try:
            outcome = task.result()
        except ImagegateError as exc:
            yield _error_event(exc)
            return
        except Exception:
            log.exception("request %s failed while streaming", request_id)
            yield _error_event(ImagegateError("The server had an error while processing your request."))
            return
        for image in outcome.images:
            for piece in _completed_event(prefix, outcome, image):
                yield piece
        answer[0].images_sent = True
    finally:
        await _stop(task)


async def _stop(task: asyncio.Future[ImagesOutcome]) -> None:
    """Cancel the request if it is still running (the client left), and wait for it to end."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


def _sse(event: str, payload: dict[str, Any], b64: bytes | memoryview | None = None) -> list[bytes | memoryview]:
    """One event; the base64 (megabytes, no JSON escaping needed) is spliced in after encoding,
    as the JSON answer does, so it goes out as the bytes it is."""
    if b64 is None:
        return [b"event: " + event.encode() + b"\ndata: " + jsonio.dumps(payload) + b"\n\n"]
    placeholder = f"b64-{secrets.token_hex(8)}"
    payload["b64_json"] = placeholder
    pieces = splice(jsonio.dumps(payload), {f'"{placeholder}"'.encode(): [b'"', b64, b'"']})
    return [b"event: " + event.encode() + b"\ndata: ", *pieces, b"\n\n"]


def _image_fields(image: OutputImage) -> dict[str, Any]:
    return {"size": f"{image.width}x{image.height}", "output_format": image.format}


def _partial_event(prefix: str, index: int, image: OutputImage) -> list[bytes | memoryview]:
    event = f"{prefix}.partial_image"
    payload = {"type": event, "partial_image_index": index, "created_at": _now(), **_image_fields(image)}
    return _sse(event, payload, image.blob.b64_bytes())


def _completed_event(prefix: str, outcome: ImagesOutcome, image: OutputImage) -> list[bytes | memoryview]:
    """One final image with the request's usage (the whole request's, on each image's event),
    and imagegate's `effective` and `adjustments`; `url` too when the image is hosted."""
    event = f"{prefix}.completed"
    payload: dict[str, Any] = {
        "type": event,
        "created_at": outcome.created,
        **_image_fields(image),
        "usage": usage_object(outcome),
        "effective": outcome.effective(),
        "adjustments": adjustment_list(outcome),
    }
    if image.revised_prompt is not None:
        payload["revised_prompt"] = image.revised_prompt
    if image.url is not None and not image.url.startswith("data:"):
        payload["url"] = image.url
    return _sse(event, payload, image.blob.b64_bytes())


def _error_event(exc: ImagegateError) -> bytes:
    return b"".join(_sse("error", exc.to_openai_json()))


def _now() -> int:
    return int(time.time())


# An async job's kept events (jobs.py, server/job_routes.py) are these same events, as bytes.


def partial_event_bytes(prefix: str, index: int, image: OutputImage) -> bytes:
    return b"".join(_partial_event(prefix, index, image))


def completed_event_bytes(prefix: str, outcome: ImagesOutcome) -> list[bytes]:
    """One completed event per image of the answer."""
    return [b"".join(_completed_event(prefix, outcome, image)) for image in outcome.images]


def error_event_bytes(exc: ImagegateError) -> bytes:
    return _error_event(exc)
