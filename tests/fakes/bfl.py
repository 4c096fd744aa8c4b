"""Fake Black Forest Labs FLUX API on real loopback HTTP.

Speaks the wire format the adapter's docstring cites (providers/bfl.py): `POST /v1/{endpoint}` with
`x-key` and a JSON body validated like BFL's pydantic schemas (422 `{"detail": [{"loc", "msg",
"type"}]}`), answered with `{"id", "polling_url", "cost", "input_mp", "output_mp"}`. The polling URL
is on this server but under a path unlike anything an adapter would build from the id
(`/regional/eu/v1/get_result?id=...`; `/v1/get_result` itself answers 404), so a test passing proves
the returned URL was polled. A task answers `Pending` for `pending_polls` polls, then `Ready` with
`result.sample`: a signed-looking URL under `/delivery/` serving a real image of the requested size
and format (a solid `color_for(prompt)`, or `color_for(f"{prompt}|{seed}")` with a seed), without
needing the key.

Endpoints: `flux-2-pro`, `flux-2-max`, `flux-2-flex` (Flux2Inputs: width/height, input_image to
input_image_8, disable_pup; flex also prompt_upsampling, steps, guidance) and `flux-kontext-pro`,
`flux-kontext-max` (FluxKontextProInputs: aspect_ratio, input_image to input_image_4,
prompt_upsampling, safety_tolerance 0-6). Unknown fields are a 422 here (whether BFL ignores them is
UNCONFIRMED; strictness catches adapter typos).

    with FakeBfl() as fake:
        fake.enqueue(Moderated())        # the next task ends "Content Moderated"
        ... BflProvider(api_key=fake.api_key, base_url=fake.base_url, client=...)
"""

from __future__ import annotations

import base64
import binascii
import math
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
from .images import color_for, detect_mime, image_size, solid_image

__all__ = [
    "FLEX_FIELDS",
    "FLUX2_ENDPOINTS",
    "FLUX2_FIELDS",
    "KONTEXT_FIELDS",
    "KONTEXT_ENDPOINTS",
    "KONTEXT_SIZES",
    "BflError",
    "Delay",
    "FakeBfl",
    "Hang",
    "MalformedJSON",
    "Moderated",
    "PollError",
    "RawResponse",
    "RecordedRequest",
    "SampleMissing",
    "Stuck",
    "Task",
    "TaskFails",
    "TaskLost",
    "output_size",
    "validate",
]

FLUX2_ENDPOINTS = ("flux-2-pro", "flux-2-max", "flux-2-flex")
KONTEXT_ENDPOINTS = ("flux-kontext-pro", "flux-kontext-max")
FLUX2_FIELDS = {
    "prompt",
    "seed",
    "width",
    "height",
    "safety_tolerance",
    "output_format",
    "webhook_url",
    "webhook_secret",
    "disable_pup",
    "input_image",
    *(f"input_image_{i}" for i in range(2, 9)),
}
FLEX_FIELDS = (FLUX2_FIELDS - {"disable_pup"}) | {"prompt_upsampling", "steps", "guidance"}
KONTEXT_FIELDS = {
    "prompt",
    "seed",
    "aspect_ratio",
    "output_format",
    "webhook_url",
    "webhook_secret",
    "prompt_upsampling",
    "safety_tolerance",
    "input_image",
    *(f"input_image_{i}" for i in range(2, 5)),
}
OUTPUT_FORMATS = ("jpeg", "png")
MIME_BY_FORMAT = {"jpeg": "image/jpeg", "png": "image/png"}
FLUX2_MAX_PIXELS = 2048 * 2048  # "up to 4 MP" (UNCONFIRMED whether that is 4.0e6 or 2048^2)
FLUX2_MIN_SIDE, FLUX2_MULTIPLE = 64, 16
# FLUX.1 Kontext's preferred resolutions (diffusers PREFERRED_KONTEXT_RESOLUTIONS): the output is the
# one nearest in ratio to aspect_ratio (or to the input image). What BFL returns exactly is UNCONFIRMED.
KONTEXT_SIZES = (
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
)


# --- scripted behaviours (one per submit) ----------------------------------------------------


@dataclass(frozen=True)
class BflError:
    """The submit answers HTTP `status` with `{"detail": detail}` (402 credits, 429 too many tasks, ...)."""

    status: int
    detail: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Moderated:
    """The task ends with this moderation status and reasons."""

    status: str = "Content Moderated"
    reasons: tuple[str, ...] = ("NSFW",)


@dataclass(frozen=True)
class TaskFails:
    """The task ends `status` ("Error" or "Failed") with this `error` text."""

    status: str = "Error"
    error: str = "Internal error while generating."


@dataclass(frozen=True)
class TaskLost:
    """Polls answer HTTP 404 with status "Task not found" (UNCONFIRMED: the HTTP status BFL uses)."""


@dataclass(frozen=True)
class Stuck:
    """The task stays Pending forever."""


@dataclass(frozen=True)
class PollError:
    """The first `times` polls of this task answer HTTP `status` (a proxy hiccup), then it goes on."""

    status: int = 503
    times: int = 1


@dataclass(frozen=True)
class SampleMissing:
    """The task is Ready but its sample URL answers 404 (as after its ten minutes)."""


_OUTCOMES = (Moderated, TaskFails, TaskLost, Stuck, PollError, SampleMissing)


@dataclass
class Task:
    """The fake's state of one task."""

    id: str
    endpoint: str
    body: dict[str, Any]
    images: list[bytes]
    outcome: Any = None
    polls: int = 0
    poll_errors_left: int = 0
    sample: str | None = None


class _Reject(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def _invalid(loc: str, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", loc], "msg": msg, "type": kind}


def _decode_image(value: Any) -> bytes | None:
    """Base64 (optionally as a data URI) decoded to an image; None for a URL (BFL fetches those)."""
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    payload = value.partition(",")[2] if value.startswith("data:") else value
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not valid base64") from exc
    if detect_mime(data) is None:
        raise ValueError("is not an image")
    return data


def _ratio(text: Any) -> float | None:
    if not isinstance(text, str) or text.count(":") != 1:
        return None
    w, h = text.split(":")
    try:
        value = int(w) / int(h)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def validate(endpoint: str, body: Any) -> list[bytes]:
    """Check a submit body like the endpoint's schema; the decoded input images, in field order."""
    if not isinstance(body, dict):
        raise _Reject(422, [_invalid("body", "Input should be a valid dictionary", "dict_type")])
    kontext = endpoint in KONTEXT_ENDPOINTS
    allowed = KONTEXT_FIELDS if kontext else FLEX_FIELDS if endpoint == "flux-2-flex" else FLUX2_FIELDS
    errors = [
        _invalid(name, "Extra inputs are not permitted", "extra_forbidden") for name in sorted(set(body) - allowed)
    ]
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        errors.append(_invalid("prompt", "Field required", "missing"))
    tolerance, top = body.get("safety_tolerance", 2), 6 if kontext else 5
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 0 <= tolerance <= top:
        errors.append(_invalid("safety_tolerance", f"Input should be an integer from 0 to {top}"))
    if "output_format" in body and body["output_format"] not in OUTPUT_FORMATS:
        errors.append(_invalid("output_format", "Input should be 'jpeg' or 'png'", "enum"))
    if "seed" in body and (isinstance(body["seed"], bool) or not isinstance(body["seed"], int)):
        errors.append(_invalid("seed", "Input should be a valid integer", "int_type"))
    for flag in ("disable_pup", "prompt_upsampling"):
        if flag in body and not isinstance(body[flag], bool):
            errors.append(_invalid(flag, "Input should be a valid boolean", "bool_type"))
    if kontext:
        ratio = _ratio(body.get("aspect_ratio", "1:1"))
        if ratio is None or not 9 / 21 - 1e-9 <= ratio <= 21 / 9 + 1e-9:
            errors.append(_invalid("aspect_ratio", "Aspect ratio must be between 21:9 and 9:21"))
    else:
        _check_dimensions(body, errors)
    images: list[bytes] = []
    for name in ("input_image", *(f"input_image_{i}" for i in range(2, 9))):
        if name in body and body[name] is not None:
            try:
                data = _decode_image(body[name])
            except ValueError as exc:
                errors.append(_invalid(name, f"{name} {exc}"))
                continue
            if data is not None:
                images.append(data)
    if errors:
        raise _Reject(422, errors)
    return images


def _check_dimensions(body: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    sides = {}
    for name in ("width", "height"):
        value = body.get(name)
        if value is None or value == 0:  # 0 or absent: the model chooses
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < FLUX2_MIN_SIDE or value % FLUX2_MULTIPLE:
            errors.append(
                _invalid(
                    name, f"{name} must be an integer of at least {FLUX2_MIN_SIDE}, a multiple of {FLUX2_MULTIPLE}"
                )
            )
            continue
        sides[name] = value
    if len(sides) == 2 and sides["width"] * sides["height"] > FLUX2_MAX_PIXELS:
        errors.append(_invalid("width", "width x height must be at most 4 megapixels"))


def output_size(task: Task) -> tuple[int, int]:
    """FLUX.2: width x height as sent (absent: the first input's size, else 1024x1024); Kontext: the
    preferred resolution nearest the aspect_ratio (absent: the input's shape, else square)."""
    body = task.body
    if task.endpoint in KONTEXT_ENDPOINTS:
        ratio = _ratio(body.get("aspect_ratio"))
        if ratio is None:
            w, h = image_size(task.images[0]) if task.images else (1, 1)
            ratio = w / h
        return min(KONTEXT_SIZES, key=lambda size: abs(math.log(size[0] / size[1] / ratio)))
    if body.get("width") and body.get("height"):
        return int(body["width"]), int(body["height"])
    return image_size(task.images[0]) if task.images else (1024, 1024)


class FakeBfl(BaseFake):
    """Fake BFL upstream. `with FakeBfl() as fake: fake.base_url`.

    Settings (reset() restores the constructor's): `api_key`; `pending_polls` (polls that answer
    Pending before the terminal status); `polling_host` (the host put in polling URLs; another name
    for loopback, such as "localhost", makes them look foreign).
    """

    def __init__(self, *, api_key: str = "test-bfl-key", pending_polls: int = 1) -> None:
        super().__init__()
        self.api_key = api_key
        self.pending_polls = pending_polls
        self.polling_host: str | None = None
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._settings: dict[str, Any] = {"api_key": api_key, "pending_polls": pending_polls, "polling_host": None}

    def reset(self) -> None:
        super().reset()
        self.tasks.clear()
        self.files.clear()
        for name, value in self._settings.items():
            setattr(self, name, value)

    @property
    def base_url(self) -> str:
        return self.url

    # --- recorded traffic, by kind ---
    @property
    def submits(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def polls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/get_result")]

    @property
    def downloads(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/delivery/")]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/{endpoint}", self._submit, methods=["POST"]),
                Route("/regional/eu/v1/get_result", self._poll, methods=["GET"]),
                Route("/delivery/{name}", self._file, methods=["GET"]),
            ]
        )

    def _check_key(self, request: Request) -> None:
        key = request.headers.get("x-key")
        if key is None:
            raise _Reject(403, "Not authenticated")
        if key != self.api_key:
            raise _Reject(401, "Invalid API key")  # the exact text BFL sends is UNCONFIRMED

    # --- submit ---
    async def _submit(self, request: Request) -> Response:
        recorded = await self.record(request)
        endpoint = request.path_params["endpoint"]
        recorded.model = endpoint
        async with self.track():
            behaviour = self.next_behaviour()
            if isinstance(behaviour, (Hang, Delay)):
                await self.sleep(request, behaviour.seconds)
                behaviour = None
            try:
                self._check_key(request)
                if endpoint not in FLUX2_ENDPOINTS + KONTEXT_ENDPOINTS:
                    raise _Reject(404, "Not Found")
                ok, recorded.json = parse_json(recorded.body)
                if not ok:
                    raise _Reject(422, [_invalid("body", "JSON decode error", "json_invalid")])
                images = await run_in_threadpool(validate, endpoint, recorded.json)
            except _Reject as reject:
                return json_response(reject.status, {"detail": reject.detail})
            return self._answer_submit(behaviour, Task(secrets.token_hex(8), endpoint, recorded.json, images))

    def _answer_submit(self, behaviour: Any, task: Task) -> Response:
        if isinstance(behaviour, BflError):
            headers = None if behaviour.retry_after_s is None else {"Retry-After": f"{behaviour.retry_after_s:g}"}
            return json_response(behaviour.status, {"detail": behaviour.detail}, headers)
        if isinstance(behaviour, MalformedJSON):
            return Response(behaviour.body or '{"id": "abc", "polling_url": ', media_type="application/json")
        if isinstance(behaviour, RawResponse):
            return raw_response(behaviour)
        if behaviour is not None and not isinstance(behaviour, _OUTCOMES):
            raise TypeError(f"FakeBfl cannot apply behaviour {behaviour!r}")
        task.outcome = behaviour
        if isinstance(behaviour, PollError):
            task.poll_errors_left = behaviour.times
        self.tasks[task.id] = task
        host = self.polling_host or "127.0.0.1"
        port = self.url.rsplit(":", 1)[1]
        polling_url = f"http://{host}:{port}/regional/eu/v1/get_result?id={task.id}"
        return json_response(
            200, {"id": task.id, "polling_url": polling_url, "cost": 3.0, "input_mp": 0.0, "output_mp": 1.05}
        )

    # --- poll ---
    async def _poll(self, request: Request) -> Response:
        await self.record(request)
        try:
            self._check_key(request)
        except _Reject as reject:
            return json_response(reject.status, {"detail": reject.detail})
        task_id = request.query_params.get("id", "")
        task = self.tasks.get(task_id)
        if task is None or isinstance(task.outcome, TaskLost):
            return json_response(404, {"id": task_id, "status": "Task not found", "result": None})
        if task.poll_errors_left > 0:
            task.poll_errors_left -= 1
            return json_response(task.outcome.status, {"detail": "Service temporarily unavailable"})
        task.polls += 1
        if isinstance(task.outcome, Stuck) or task.polls <= self.pending_polls:
            return json_response(
                200, {"id": task.id, "status": "Pending", "result": None, "progress": 0.5, "details": None}
            )
        return json_response(200, await self._finish(task))

    async def _finish(self, task: Task) -> dict[str, Any]:
        outcome = task.outcome
        if isinstance(outcome, Moderated):
            return {
                "id": task.id,
                "status": outcome.status,
                "result": None,
                "details": {"Moderation Reasons": list(outcome.reasons)},
            }
        if isinstance(outcome, TaskFails):
            return {"id": task.id, "status": outcome.status, "result": None, "error": outcome.error, "details": None}
        if task.sample is None:
            task.sample = await run_in_threadpool(self._render, task)
        seed = task.body.get("seed")
        return {
            "id": task.id,
            "status": "Ready",
            "progress": None,
            "details": None,
            "result": {
                "sample": task.sample,
                "prompt": task.body["prompt"],
                "seed": seed,
                "start_time": 1700000000.0,
                "end_time": 1700000004.2,
                "duration": 4.2,
            },
        }

    def _render(self, task: Task) -> str:
        fmt = task.body.get("output_format") or ("png" if task.endpoint in KONTEXT_ENDPOINTS else "jpeg")
        width, height = output_size(task)
        prompt, seed = task.body["prompt"], task.body.get("seed")
        data = solid_image(
            MIME_BY_FORMAT[fmt], width, height, color_for(prompt if seed is None else f"{prompt}|{seed}")
        )
        name = f"{task.id}.{fmt}"
        if not isinstance(task.outcome, SampleMissing):
            self.files[name] = (data, MIME_BY_FORMAT[fmt])
        # Signed-looking, like BFL's delivery blob URLs.
        return f"{self.url}/delivery/{name}?se=2026-01-01T00%3A10%3A00Z&sig={secrets.token_hex(6)}"

    async def _file(self, request: Request) -> Response:
        await self.record(request)
        name = request.path_params["name"]
        if name not in self.files:
            return Response("<Error><Code>BlobNotFound</Code></Error>", status_code=404, media_type="application/xml")
        data, mime = self.files[name]
        return Response(data, media_type=mime)
