"""Fake fal queue API for fal-ai/nano-banana-pro (and its `/edit`) on real loopback HTTP.

Mirrors the provider wire-format reference (the spec), section 4: `Authorization: Key ...`,
submit then poll then fetch the result, status/result/cancel URLs that drop the `/edit` sub-path
(the gotcha a client must survive), pydantic-style 422 bodies for bad input, `detail` errors
with X-Fal-Retryable, and output images served from `/files/` (or inlined as data URIs with
`sync_mode`).

    with FakeFal() as fake:
        submit:  POST {fake.base_url}/fal-ai/nano-banana-pro           (or .../edit)
        status:  GET  {fake.base_url}/fal-ai/nano-banana-pro/requests/{id}/status
        result:  GET  {fake.base_url}/fal-ai/nano-banana-pro/requests/{id}
        cancel:  PUT  {fake.base_url}/fal-ai/nano-banana-pro/requests/{id}/cancel

A job reports IN_QUEUE for `queue_polls` status polls, IN_PROGRESS for one, then COMPLETED.

`fal-ai/nano-banana` (and its `/edit`) has its own, smaller schema (prompt, num_images, aspect_ratio
without "auto", output_format, sync_mode, limit_generations, and image_urls for edits; no
resolution, seed, safety_tolerance or web search; UNCONFIRMED, from third-party copies) and renders
the Gemini 2.5 Flash size table (1K only).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .common import (
    BaseFake,
    Delay,
    Hang,
    MalformedJSON,
    RawResponse,
    RecordedRequest,
    json_response,
    parse_json,
    raw_response,
)
from .gemini import FLASH_SIZES, PRO_SIZES
from .images import color_for, detect_mime, solid_image

__all__ = [
    "ASPECT_RATIOS",
    "ContentPolicy",
    "Delay",
    "FailsAfterRunning",
    "FakeFal",
    "FalError",
    "FalJob",
    "Hang",
    "MalformedJSON",
    "MissingFiles",
    "NANO_BANANA",
    "NoImages",
    "NoQueueUrls",
    "OnResult",
    "OnStatus",
    "PRO_SIZES",
    "RawResponse",
    "RecordedRequest",
    "StuckInQueue",
    "description_for",
]

ASPECT_RATIOS = ("auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")
RESOLUTIONS = ("1K", "2K", "4K")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
SAFETY_TOLERANCES = ("1", "2", "3", "4", "5", "6")
MIME_BY_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_NUM_IMAGES = 4

_ENUMS: dict[str, tuple[str, ...]] = {
    "aspect_ratio": ASPECT_RATIOS,
    "resolution": RESOLUTIONS,
    "output_format": OUTPUT_FORMATS,
    "safety_tolerance": SAFETY_TOLERANCES,
}
_BOOLS = ("sync_mode", "enable_web_search", "limit_generations")
_STRINGS = ("prompt", "system_prompt")
_INTS = ("num_images", "seed")
GENERATE_FIELDS = frozenset({*_ENUMS, *_BOOLS, *_STRINGS, *_INTS})
EDIT_FIELDS = GENERATE_FIELDS | {"image_urls"}

# fal-ai/nano-banana: the fields it takes (UNCONFIRMED, from third-party copies of its schema).
NANO_BANANA = "fal-ai/nano-banana"
NANO_BANANA_ASPECT_RATIOS = tuple(r for r in ASPECT_RATIOS if r != "auto")
NANO_BANANA_GENERATE_FIELDS = frozenset(
    {"prompt", "num_images", "aspect_ratio", "output_format", "sync_mode", "limit_generations"}
)
NANO_BANANA_EDIT_FIELDS = NANO_BANANA_GENERATE_FIELDS | {"image_urls"}
NANO_BANANA_MAX_IMAGE_URLS = 10

POLICY_MESSAGE = "The content could not be processed because it contained material flagged by a content checker."


def description_for(prompt: str) -> str:
    """The `description` text the fake returns, so tests can predict revised_prompt."""
    return f"Here is your image: {prompt}"


# --- scripted behaviours (consumed one per submit) -------------------------------------------


@dataclass(frozen=True)
class FalError:
    """Answer the submit with HTTP `status` and `{"detail": detail}` (a list of pydantic-style
    items or a plain string). `error_type` goes in the X-Fal-Error-Type header, `retry_after_s`
    in Retry-After; X-Fal-Retryable is "true" for 408/409/429/5xx."""

    status: int
    detail: Any
    error_type: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class ContentPolicy:
    """422 with a `content_policy_violation` detail item on `prompt`, not retryable."""

    message: str = POLICY_MESSAGE


@dataclass(frozen=True)
class StuckInQueue:
    """The job stays IN_QUEUE forever (until cancelled); cancels are counted in `fake.cancels`."""


@dataclass(frozen=True)
class FailsAfterRunning:
    """The job goes through the queue and ends COMPLETED with `error` / `error_type`; its
    result URL then answers with an error too."""

    error_type: str = "internal_server_error"
    message: str = "The model failed to generate an image."


@dataclass(frozen=True)
class NoImages:
    """The job completes with `images: []` (and a description)."""

    description: str = "I could not create an image for that."


@dataclass(frozen=True)
class MissingFiles:
    """The job completes, but its image URLs point at files that are not there (404)."""


@dataclass(frozen=True)
class NoQueueUrls:
    """The submit answer carries only `request_id` (no status/response/cancel URLs)."""


@dataclass(frozen=True)
class OnStatus:
    """The first `polls` status polls answer with `behaviour` (a FalError, MalformedJSON,
    RawResponse, Hang or Delay) without advancing the job; later polls behave normally."""

    behaviour: Any
    polls: int = 1


@dataclass(frozen=True)
class OnResult:
    """The job completes, but the result GET answers with `behaviour` (a FalError,
    MalformedJSON, RawResponse, Hang or Delay) instead of the output."""

    behaviour: Any


# --- jobs ------------------------------------------------------------------------------------


@dataclass
class FalJob:
    """One submitted request, as the fake tracks it."""

    request_id: str
    app: str  # "owner/alias", where the queue URLs live
    endpoint: str  # what was submitted to, e.g. "fal-ai/nano-banana-pro/edit"
    input: dict[str, Any]
    input_images: list[bytes]  # decoded data-URI inputs, in order
    behaviour: Any
    queue_polls: int
    polls: int = 0
    status_hiccups: int = 0  # OnStatus answers given so far
    cancelled: bool = False
    output: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return not self.cancelled and not isinstance(self.behaviour, StuckInQueue) and self.polls > self.queue_polls + 1


class _Reject(Exception):
    """A request the real API would refuse, with the status and body to send."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers


def _item(loc: list[Any], msg: str, type_: str, **more: Any) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_, **more}


# --- input validation (pydantic v1 style, like fal's 422s) -------------------------------------


def _check_scalar(name: str, value: Any, enums: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any] | None:
    loc = ["body", name]
    enums = _ENUMS if enums is None else enums
    if name in _STRINGS and not isinstance(value, str):
        return _item(loc, "str type expected", "type_error.str")
    if name in _BOOLS and not isinstance(value, bool):
        return _item(loc, "value could not be parsed to a boolean", "type_error.bool")
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            return _item(loc, "value is not a valid integer", "type_error.integer")
        if name == "num_images" and value < 1:
            return _item(
                loc,
                "ensure this value is greater than or equal to 1",
                "value_error.number.not_ge",
                ctx={"limit_value": 1},
            )
        if name == "num_images" and value > MAX_NUM_IMAGES:
            return _item(
                loc,
                f"ensure this value is less than or equal to {MAX_NUM_IMAGES}",
                "value_error.number.not_le",
                ctx={"limit_value": MAX_NUM_IMAGES},
            )
    if name in enums and value not in enums[name]:  # an integer 4 is not the string "4"
        permitted = ", ".join(f"'{v}'" for v in enums[name])
        return _item(
            loc,
            f"value is not a valid enumeration member; permitted: {permitted}",
            "type_error.enum",
            ctx={"enum_values": list(enums[name])},
        )
    return None


def _decode_image_url(url: Any, index: int) -> tuple[bytes | None, dict[str, Any] | None]:
    """(image bytes for a data URI, None for an http URL) or a validation item."""
    loc = ["body", "image_urls", index]
    if not isinstance(url, str):
        return None, _item(loc, "str type expected", "type_error.str")
    if url.startswith(("http://", "https://")):
        return None, None  # not fetched: the fake cannot reach the internet
    if not url.startswith("data:"):
        return None, _item(loc, "invalid or missing URL scheme", "value_error.url.scheme")
    header, _, payload = url.partition(",")
    try:
        data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else None
    except (binascii.Error, ValueError):
        data = None
    if data is None or detect_mime(data) is None:
        return None, _item(
            loc,
            "Failed to load the image. Please ensure the image file is not corrupted and is in a supported format.",
            "image_load_error",
            input=url[:64],
        )
    return data, None


def validate_input(body: Any, *, edit: bool, app: str | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Check a submit body as fal's schema does (fal-ai/nano-banana's own when `app` is it);
    raise _Reject(422) with every problem found."""
    if not isinstance(body, dict):
        raise _Reject(422, {"detail": [_item(["body"], "value is not a valid dict", "type_error.dict")]})
    enums = _ENUMS
    allowed = EDIT_FIELDS if edit else GENERATE_FIELDS
    if app == NANO_BANANA:
        allowed = NANO_BANANA_EDIT_FIELDS if edit else NANO_BANANA_GENERATE_FIELDS
        enums = {**_ENUMS, "aspect_ratio": NANO_BANANA_ASPECT_RATIOS}
    problems: list[dict[str, Any]] = []
    for key in body:
        if key not in allowed:
            problems.append(_item(["body", key], "extra fields not permitted", "value_error.extra"))
    required = ("prompt", "image_urls") if edit else ("prompt",)
    for key in required:
        if key not in body:
            problems.append(_item(["body", key], "field required", "value_error.missing"))
    for key, value in body.items():
        if key in allowed and key != "image_urls":
            problem = _check_scalar(key, value, enums)
            if problem is not None:
                problems.append(problem)
    images: list[bytes] = []
    if edit and "image_urls" in body:
        urls = body["image_urls"]
        if not isinstance(urls, list):
            problems.append(_item(["body", "image_urls"], "value is not a valid list", "type_error.list"))
        elif app == NANO_BANANA and len(urls) > NANO_BANANA_MAX_IMAGE_URLS:
            problems.append(
                _item(
                    ["body", "image_urls"],
                    f"ensure this value has at most {NANO_BANANA_MAX_IMAGE_URLS} items",
                    "value_error.list.max_items",
                    ctx={"limit_value": NANO_BANANA_MAX_IMAGE_URLS},
                )
            )
        else:
            for index, url in enumerate(urls):
                data, problem = _decode_image_url(url, index)
                if problem is not None:
                    problems.append(problem)
                elif data is not None:
                    images.append(data)
    if problems:
        raise _Reject(422, {"detail": problems})
    return body, images


def _retryable(status: int) -> str:
    return "true" if status in (408, 409, 429) or status >= 500 else "false"


# --- the fake --------------------------------------------------------------------------------


class FakeFal(BaseFake):
    """Fake fal queue upstream. `with FakeFal() as fake: fake.base_url` (the queue host).

    Attributes tests read or set: `api_key`, `queue_polls` (IN_QUEUE polls per job),
    `known_apps` (None = every owner/alias exists), `jobs` (request_id -> FalJob), `cancels`
    (PUT .../cancel received for known jobs), `files` / `downloads` (the `/files/` store)."""

    def __init__(
        self, *, api_key: str = "test-fal-key", queue_polls: int = 1, known_apps: set[str] | None = None
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.queue_polls = queue_polls
        self.known_apps = known_apps
        self.jobs: dict[str, FalJob] = {}
        self.cancels = 0
        self.files: dict[str, tuple[bytes, str]] = {}  # served at /files/{name}
        self.downloads: list[str] = []  # names fetched from /files/
        self._settings = dict(api_key=api_key, queue_polls=queue_polls, known_apps=known_apps)

    def reset(self) -> None:
        """Clear recordings/queue/counters/jobs/files and restore the constructor settings."""
        super().reset()
        self.jobs.clear()
        self.files.clear()
        self.downloads.clear()
        self.cancels = 0
        for name, value in self._settings.items():
            setattr(self, name, value)

    @property
    def base_url(self) -> str:
        """What to give the client as FAL_BASE_URL (it appends /{endpoint id})."""
        return self.url

    @property
    def submits(self) -> list[RecordedRequest]:
        """The submit requests only (not polls, result fetches, cancels or downloads)."""
        return [r for r in self.requests if r.method == "POST"]

    def by_path_suffix(self, suffix: str, method: str = "GET") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def queue_root(self, app: str, request_id: str) -> str:
        return f"{self.url}/{app}/requests/{request_id}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/files/{name}", self._file, methods=["GET"]),
                Route("/{owner}/{alias}/requests/{request_id}/status", self._status, methods=["GET"]),
                Route("/{owner}/{alias}/requests/{request_id}/cancel", self._cancel, methods=["PUT"]),
                Route("/{owner}/{alias}/requests/{request_id}", self._result, methods=["GET"]),
                Route("/{owner}/{alias}", self._submit, methods=["POST"]),
                Route("/{owner}/{alias}/edit", self._submit, methods=["POST"]),
                Route("/{rest:path}", self._not_found, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )

    # --- helpers ---

    def _check_auth(self, request: Request) -> None:
        if request.headers.get("authorization") != f"Key {self.api_key}":
            raise _Reject(401, {"detail": "Unauthorized"})

    @staticmethod
    def _app_of(request: Request) -> str:
        return f"{request.path_params['owner']}/{request.path_params['alias']}"

    def _job(self, request: Request) -> FalJob:
        job = self.jobs.get(request.path_params["request_id"])
        if job is None or job.app != self._app_of(request):
            raise _Reject(404, {"detail": "Request not found"})
        return job

    async def _guarded(self, request: Request, handler: Any) -> Response:
        """Record, authenticate, run; a _Reject becomes its JSON error."""
        recorded = await self.record(request)
        async with self.track():
            try:
                self._check_auth(request)
                result: Response = await handler(request, recorded)
                return result
            except _Reject as reject:
                return json_response(reject.status, reject.body, reject.headers)

    async def _not_found(self, request: Request) -> Response:
        await self.record(request)
        return json_response(404, {"detail": "Not Found"})

    # --- submit ---

    async def _submit(self, request: Request) -> Response:
        return await self._guarded(request, self._do_submit)

    async def _do_submit(self, request: Request, recorded: RecordedRequest) -> Response:
        app = self._app_of(request)
        edit = request.url.path.endswith("/edit")
        recorded.model = f"{app}/edit" if edit else app
        if self.known_apps is not None and app not in self.known_apps:
            raise _Reject(404, {"detail": f"Application '{app}' not found"})
        ok, recorded.json = parse_json(recorded.body)
        if not ok:
            raise _Reject(422, {"detail": [_item(["body", 0], "Expecting value", "value_error.jsondecode")]})
        body, images = validate_input(recorded.json, edit=edit, app=app)
        behaviour = self.next_behaviour()
        if isinstance(behaviour, (Hang, Delay)):
            await self.sleep(request, behaviour.seconds)
        elif isinstance(behaviour, FalError):
            return self._fal_error(behaviour)
        elif isinstance(behaviour, ContentPolicy):
            item = _item(
                ["body", "prompt"],
                behaviour.message,
                "content_policy_violation",
                url="https://docs.fal.ai/errors#content_policy_violation",
                input=body.get("prompt"),
            )
            return json_response(422, {"detail": [item]}, {"X-Fal-Retryable": "false"})
        elif isinstance(behaviour, MalformedJSON):
            return Response(behaviour.body or '{"request_id": "', media_type="application/json")
        elif isinstance(behaviour, RawResponse):
            return raw_response(behaviour)
        elif behaviour is not None and not isinstance(
            behaviour, (StuckInQueue, FailsAfterRunning, NoImages, MissingFiles, NoQueueUrls, OnResult, OnStatus)
        ):
            raise TypeError(f"FakeFal cannot apply behaviour {behaviour!r}")
        job = FalJob(secrets.token_hex(16), app, recorded.model, body, images, behaviour, self.queue_polls)
        self.jobs[job.request_id] = job
        return json_response(200, self._submit_answer(job))

    def _submit_answer(self, job: FalJob) -> dict[str, Any]:
        answer: dict[str, Any] = {"request_id": job.request_id, "queue_position": job.queue_polls}
        if not isinstance(job.behaviour, NoQueueUrls):
            root = self.queue_root(job.app, job.request_id)  # no "/edit": like real fal
            answer |= {"status_url": f"{root}/status", "response_url": root, "cancel_url": f"{root}/cancel"}
        return answer

    @staticmethod
    def _fal_error(error: FalError) -> Response:
        headers = {"X-Fal-Retryable": _retryable(error.status)}
        if error.error_type is not None:
            headers["X-Fal-Error-Type"] = error.error_type
        if error.retry_after_s is not None:
            headers["Retry-After"] = f"{error.retry_after_s:g}"
        return json_response(error.status, {"detail": error.detail}, headers)

    # --- status / result / cancel ---

    async def _status(self, request: Request) -> Response:
        return await self._guarded(request, self._do_status)

    async def _do_status(self, request: Request, recorded: RecordedRequest) -> Response:
        job = self._job(request)
        scripted = job.behaviour
        if isinstance(scripted, OnStatus) and job.status_hiccups < scripted.polls:
            job.status_hiccups += 1
            answer = await self._apply_inner(request, scripted.behaviour, '{"status": "IN_')
            if answer is not None:
                return answer
        job.polls += 1
        root = self.queue_root(job.app, job.request_id)
        answer: dict[str, Any] = {
            "request_id": job.request_id,
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
        }
        logs: list[Any] | None = [] if request.query_params.get("logs") == "1" else None
        if job.cancelled:
            return json_response(
                200,
                answer
                | {
                    "status": "COMPLETED",
                    "logs": logs,
                    "error": "Request was cancelled",
                    "error_type": "request_cancelled",
                },
            )
        if isinstance(job.behaviour, StuckInQueue) or job.polls <= job.queue_polls:
            position = 0 if isinstance(job.behaviour, StuckInQueue) else job.queue_polls - job.polls
            return json_response(202, answer | {"status": "IN_QUEUE", "queue_position": position})
        if job.polls == job.queue_polls + 1:
            return json_response(202, answer | {"status": "IN_PROGRESS", "logs": logs})
        answer |= {"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": 1.5}}
        if isinstance(job.behaviour, FailsAfterRunning):
            answer |= {"error": job.behaviour.message, "error_type": job.behaviour.error_type}
        return json_response(200, answer)

    async def _result(self, request: Request) -> Response:
        return await self._guarded(request, self._do_result)

    async def _do_result(self, request: Request, recorded: RecordedRequest) -> Response:
        job = self._job(request)
        if job.cancelled:
            raise _Reject(400, {"detail": "Request was cancelled"})
        if not job.completed:
            raise _Reject(400, {"detail": "Request is still in progress"})
        behaviour = job.behaviour
        if isinstance(behaviour, FailsAfterRunning):
            status = 422 if behaviour.error_type == "content_policy_violation" else 500
            item = _item(["body"], behaviour.message, behaviour.error_type)
            return json_response(status, {"detail": [item]}, {"X-Fal-Retryable": _retryable(status)})
        if isinstance(behaviour, OnResult):
            answer = await self._apply_inner(request, behaviour.behaviour, '{"images": [')
            if answer is not None:
                return answer
        if job.output is None:
            job.output = await run_in_threadpool(self._render, job)
        return json_response(200, job.output)

    async def _apply_inner(self, request: Request, behaviour: Any, truncated: str) -> Response | None:
        """An OnStatus / OnResult behaviour: the answer to send, or None (after a Hang/Delay)
        to go on and answer normally."""
        if isinstance(behaviour, (Hang, Delay)):
            await self.sleep(request, behaviour.seconds)
            return None
        if isinstance(behaviour, FalError):
            return self._fal_error(behaviour)
        if isinstance(behaviour, MalformedJSON):
            return Response(behaviour.body or truncated, media_type="application/json")
        if isinstance(behaviour, RawResponse):
            return raw_response(behaviour)
        raise TypeError(f"FakeFal cannot apply {behaviour!r} to a status or result")

    async def _cancel(self, request: Request) -> Response:
        return await self._guarded(request, self._do_cancel)

    async def _do_cancel(self, request: Request, recorded: RecordedRequest) -> Response:
        job = self._job(request)
        self.cancels += 1
        if job.completed:
            return json_response(400, {"status": "ALREADY_COMPLETED"})
        job.cancelled = True
        return json_response(202, {"status": "CANCELLATION_REQUESTED"})

    async def _file(self, request: Request) -> Response:
        await self.record(request)
        name = request.path_params["name"]
        if name not in self.files:
            return Response("Not Found", status_code=404, media_type="text/plain")
        self.downloads.append(name)
        data, mime = self.files[name]
        return Response(data, media_type=mime)

    # --- output ---

    def output_size(self, job: FalJob) -> tuple[int, int]:
        """Pixels from the Nano Banana Pro table (the Flash table for fal-ai/nano-banana); "auto"
        (the /edit default) renders 1:1."""
        default_ratio = "auto" if job.endpoint.endswith("/edit") else "1:1"
        ratio = job.input.get("aspect_ratio", default_ratio)
        if job.app == NANO_BANANA:
            return FLASH_SIZES["1:1" if ratio == "auto" else ratio]
        return PRO_SIZES[("1:1" if ratio == "auto" else ratio, job.input.get("resolution", "1K"))]

    def _render(self, job: FalJob) -> dict[str, Any]:
        """Image i is a solid color_for(f"{prompt}#{i}") in the requested format and size."""
        prompt = job.input["prompt"]
        if isinstance(job.behaviour, NoImages):
            return {"images": [], "description": job.behaviour.description}
        fmt = job.input.get("output_format", "png")
        mime = MIME_BY_FORMAT[fmt]
        width, height = self.output_size(job)
        images = []
        for i in range(job.input.get("num_images", 1)):
            data = solid_image(mime, width, height, color_for(f"{prompt}#{i}"))
            name = f"{secrets.token_hex(8)}.{fmt}"
            if job.input.get("sync_mode"):
                url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            else:
                url = f"{self.url}/files/{name}"
                if not isinstance(job.behaviour, MissingFiles):
                    self.files[name] = (data, mime)
            images.append(
                {
                    "url": url,
                    "content_type": mime,
                    "file_name": name,
                    "file_size": len(data),
                    "width": width,
                    "height": height,
                }
            )
        return {"images": images, "description": description_for(prompt)}
