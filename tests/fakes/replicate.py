"""Fake Replicate predictions API (google/nano-banana-pro) on real loopback HTTP.

Mirrors the provider wire-format reference (the spec), sections 3 and 5:
`POST /v1/models/{owner}/{name}/predictions` (with `Prefer: wait` and `Cancel-After`),
`GET /v1/predictions/{id}`, `POST .../cancel`, Bearer auth, RFC 7807 errors and 422 input
validation against the Nano Banana Pro schema. A prediction goes `starting` -> `processing` ->
terminal over polls, so adapters must poll; its output is a URL under the fake's own `/files/`
(or a `data:` URI, or a list, seedream style).

Three more models have their own input schema (anything else is validated as Nano Banana Pro):
`google/nano-banana` (prompt, image_input, aspect_ratio, output_format; one size per ratio, the
Gemini 2.5 Flash table), `bytedance/seedream-4` (size 1K/2K/4K/custom, width/height with
custom, aspect_ratio, sequential_image_generation, max_images, enhance_prompt; up to 10 input
images) and `bytedance/seedream-5-lite` (size 2K/3K only, no width/height, aspect_ratio without
4:5 or 5:4, sequential_image_generation, max_images, output_format png/jpeg; up to 14 input
images). A seedream output is always an array of URIs, one image unless
sequential_image_generation is "auto", then max_images of them.

    with FakeReplicate() as fake:
        fake.enqueue(PredictionStuck())   # the next create never finishes
        ... ReplicateProvider(api_key=fake.api_key, base_url=fake.base_url, client=...)
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from .gemini import ASPECT_RATIOS, FLASH_SIZES, PRO_SIZES, nearest_ratio
from .images import color_for, detect_mime, image_size, solid_image

__all__ = [
    "CAPACITY_ERROR",
    "NANO_BANANA",
    "SAFETY_ERROR",
    "SEEDREAM_4",
    "SEEDREAM_5_LITE",
    "CapacityFailure",
    "Delay",
    "FakeReplicate",
    "Hang",
    "MalformedJSON",
    "OutputMissing",
    "OutputNotImage",
    "PollError",
    "Prediction",
    "PredictionCanceled",
    "PredictionFails",
    "PredictionStuck",
    "RawResponse",
    "RecordedRequest",
    "ReplicateError",
]

MODEL = "google/nano-banana-pro"
INPUT_ASPECT_RATIOS = ("match_input_image", *ASPECT_RATIOS)
RESOLUTIONS = ("1K", "2K", "4K")
OUTPUT_FORMATS = ("jpg", "png")
SAFETY_FILTER_LEVELS = ("block_low_and_above", "block_medium_and_above", "block_only_high")
MAX_IMAGE_INPUTS = 14
MAX_IMAGES = 15  # seedream's max_images, accepted only with array_output
MAX_PREFER_WAIT_S = 60
INPUT_FIELDS = {
    "prompt",
    "image_input",
    "aspect_ratio",
    "resolution",
    "output_format",
    "safety_filter_level",
    "allow_fallback_model",
}
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
MIME_BY_OUTPUT_FORMAT = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
CAPACITY_ERROR = "Service is currently unavailable due to high demand. Please try again later. (E003)"
SAFETY_ERROR = "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
# google/nano-banana (Gemini 2.5 Flash Image): no resolution, safety or fallback inputs (UNCONFIRMED,
# from third-party copies of the schema).
NANO_BANANA = "google/nano-banana"
NANO_BANANA_FIELDS = {"prompt", "image_input", "aspect_ratio", "output_format"}
# bytedance/seedream-4 (the provider wire-format reference, section 5).
SEEDREAM_4 = "bytedance/seedream-4"
SEEDREAM_FIELDS = {
    "prompt",
    "image_input",
    "size",
    "width",
    "height",
    "aspect_ratio",
    "sequential_image_generation",
    "max_images",
    "enhance_prompt",
}
SEEDREAM_SIZES = ("1K", "2K", "4K", "custom")
SEEDREAM_ASPECT_RATIOS = ("match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9")
SEEDREAM_SEQUENTIAL = ("disabled", "auto")
SEEDREAM_MAX_IMAGE_INPUTS = 10
SEEDREAM_MIN_SIDE, SEEDREAM_MAX_SIDE = 1024, 4096
# bytedance/seedream-5-lite (spec/providers.md section 5; the aspect_ratio and output_format enums
# are from third-party code, UNCONFIRMED).
SEEDREAM_5_LITE = "bytedance/seedream-5-lite"
SEEDREAM_5_FIELDS = {
    "prompt",
    "image_input",
    "size",
    "aspect_ratio",
    "sequential_image_generation",
    "max_images",
    "output_format",
}
SEEDREAM_5_SIZES = ("2K", "3K")
SEEDREAM_5_OUTPUT_FORMATS = ("png", "jpeg")
SEEDREAM_5_MAX_IMAGE_INPUTS = 14
SEEDREAM_MODELS = (SEEDREAM_4, SEEDREAM_5_LITE)
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
_PREFER = re.compile(r"\s*wait(?:\s*=\s*(\d+))?\s*")
_DATA_URI = re.compile(r"data:([\w.+/-]+);base64,(.*)", flags=re.DOTALL)


# --- scripted behaviours (one per create) --------------------------------------------------


@dataclass(frozen=True)
class ReplicateError:
    """The create answers HTTP `status` with `{"detail": ...}` (plus `title` and `status`, RFC
    7807 style, when `title` is given); `retry_after_s` sets the Retry-After header."""

    status: int
    detail: str
    retry_after_s: float | None = None
    title: str | None = None


@dataclass(frozen=True)
class PredictionFails:
    """The prediction runs its normal course, then ends `failed` with this `error`."""

    error: str = "Prediction failed for an unknown reason."


@dataclass(frozen=True)
class CapacityFailure:
    """The prediction ends `failed` with Google's at-capacity text (CAPACITY_ERROR)."""


@dataclass(frozen=True)
class PredictionCanceled:
    """The prediction ends `canceled` (or `aborted`, as Cancel-After does before it starts)."""

    status: str = "canceled"


@dataclass(frozen=True)
class PredictionStuck:
    """The prediction stays `processing` forever (until canceled)."""


@dataclass(frozen=True)
class PollError:
    """The first `times` polls of this prediction answer an HTTP error (RFC 7807 body)."""

    status: int
    detail: str = "Internal server error"
    times: int = 1
    retry_after_s: float | None = None


@dataclass(frozen=True)
class OutputMissing:
    """The prediction succeeds but its output URL answers 404 (e.g. deleted after an hour)."""


@dataclass(frozen=True)
class OutputNotImage:
    """The prediction succeeds but its output URL serves these bytes."""

    body: bytes = b"<html><body>Access denied</body></html>"
    content_type: str = "text/html"


@dataclass
class Prediction:
    """The fake's state of one prediction."""

    id: str
    model: str
    input: dict[str, Any]
    outcome: Any = None  # the behaviour that decides how it ends (None: success)
    status: str = "starting"
    output: Any = None
    error: str | None = None
    polls: int = 0
    poll_errors_left: int = 0
    cancel_after: str | None = None
    prefer: str | None = None
    images: list[bytes] = field(default_factory=list)  # decoded image_input data URIs
    created_at: str = ""
    started_at: str | None = None
    completed_at: str | None = None


class _Reject(Exception):
    """A request the real API would refuse, with its RFC 7807 body."""

    def __init__(self, status: int, title: str, detail: str, **more: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body: dict[str, Any] = {"title": title, "detail": detail, "status": status, **more}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def problem(status: int, title: str | None, detail: str, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"detail": detail}
    if title is not None:
        body = {"title": title, "detail": detail, "status": status}
    return json_response(status, body, headers)


# --- input validation ------------------------------------------------------------------------


def _enum(errors: list[dict[str, str]], data: dict[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if name in data and data[name] not in allowed:
        choices = ", ".join(f'"{v}"' for v in allowed)
        errors.append(
            {"type": "enum", "field": f"input.{name}", "description": f"{name} must be one of the following: {choices}"}
        )


def _decode_data_uri(uri: str) -> bytes | None:
    match = _DATA_URI.fullmatch(uri)
    if not match:
        return None
    try:
        return base64.b64decode(match[2], validate=True)
    except (binascii.Error, ValueError):
        return None


def _image_input(errors: list[dict[str, str]], value: Any, max_items: int = MAX_IMAGE_INPUTS) -> list[bytes]:
    """Check image_input (array of http(s) or data URIs, <= max_items); decoded data-URI images out."""
    if not isinstance(value, list):
        errors.append(
            {
                "type": "array_type",
                "field": "input.image_input",
                "description": "Invalid type. Expected: array, given: " + type(value).__name__,
            }
        )
        return []
    if len(value) > max_items:
        errors.append(
            {
                "type": "array_max_items",
                "field": "input.image_input",
                "description": f"Array must have at most {max_items} items",
            }
        )
    images: list[bytes] = []
    for i, uri in enumerate(value):
        where = f"input.image_input.{i}"
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://", "data:")):
            errors.append({"type": "format", "field": where, "description": "Does not match format 'uri'"})
            continue
        if uri.startswith("data:"):
            data = _decode_data_uri(uri)
            if data is None or detect_mime(data) is None:
                errors.append(
                    {"type": "format", "field": where, "description": "Could not decode the data URI as an image"}
                )
                continue
            images.append(data)
    return images


def validate_input(data: Any, *, allow_max_images: bool) -> list[bytes]:
    """Validate like the google/nano-banana-pro schema; raise a 422 listing every problem."""
    if not isinstance(data, dict):
        raise _Reject(422, "Input validation failed", "- input: Invalid type. Expected: object\n")
    errors: list[dict[str, str]] = []
    allowed = INPUT_FIELDS | ({"max_images"} if allow_max_images else set())
    for name in sorted(set(data) - allowed):
        errors.append(
            {
                "type": "additional_property_not_allowed",
                "field": "input",
                "description": f"Additional property {name} is not allowed",
            }
        )
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        errors.append({"type": "required", "field": "input", "description": "prompt is required"})
    _enum(errors, data, "aspect_ratio", INPUT_ASPECT_RATIOS)
    _enum(errors, data, "resolution", RESOLUTIONS)
    _enum(errors, data, "output_format", OUTPUT_FORMATS)
    _enum(errors, data, "safety_filter_level", SAFETY_FILTER_LEVELS)
    if "allow_fallback_model" in data and not isinstance(data["allow_fallback_model"], bool):
        errors.append(
            {
                "type": "invalid_type",
                "field": "input.allow_fallback_model",
                "description": "Invalid type. Expected: boolean",
            }
        )
    count = data.get("max_images", 1)
    if "max_images" in allowed and (
        isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_IMAGES
    ):
        errors.append(
            {
                "type": "number_all_of",
                "field": "input.max_images",
                "description": f"Must be an integer between 1 and {MAX_IMAGES}",
            }
        )
    images = _image_input(errors, data.get("image_input", []))
    if errors:
        detail = "".join(f"- {e['field']}: {e['description']}\n" for e in errors)
        raise _Reject(422, "Input validation failed", detail, invalid_fields=errors)
    return images


def _raise_if(errors: list[dict[str, str]]) -> None:
    if errors:
        detail = "".join(f"- {e['field']}: {e['description']}\n" for e in errors)
        raise _Reject(422, "Input validation failed", detail, invalid_fields=errors)


def _object_with(data: Any, allowed: set[str]) -> list[dict[str, str]]:
    """The input must be an object with a prompt and no other fields than `allowed`."""
    if not isinstance(data, dict):
        raise _Reject(422, "Input validation failed", "- input: Invalid type. Expected: object\n")
    errors: list[dict[str, str]] = []
    for name in sorted(set(data) - allowed):
        errors.append(
            {
                "type": "additional_property_not_allowed",
                "field": "input",
                "description": f"Additional property {name} is not allowed",
            }
        )
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        errors.append({"type": "required", "field": "input", "description": "prompt is required"})
    return errors


def _int_in(errors: list[dict[str, str]], data: dict[str, Any], name: str, low: int, high: int) -> None:
    value = data.get(name)
    if name in data and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
        errors.append(
            {
                "type": "number_all_of",
                "field": f"input.{name}",
                "description": f"Must be an integer between {low} and {high}",
            }
        )


def validate_nano_banana_input(data: Any) -> list[bytes]:
    """Validate like the google/nano-banana schema (no resolution, safety or fallback inputs)."""
    errors = _object_with(data, NANO_BANANA_FIELDS)
    _enum(errors, data, "aspect_ratio", INPUT_ASPECT_RATIOS)
    _enum(errors, data, "output_format", OUTPUT_FORMATS)
    images = _image_input(errors, data.get("image_input", []))
    _raise_if(errors)
    return images


def validate_seedream_input(data: Any) -> list[bytes]:
    """Validate like the bytedance/seedream-4 schema (the provider wire-format reference, section 5)."""
    errors = _object_with(data, SEEDREAM_FIELDS)
    _enum(errors, data, "size", SEEDREAM_SIZES)
    _enum(errors, data, "aspect_ratio", SEEDREAM_ASPECT_RATIOS)
    _enum(errors, data, "sequential_image_generation", SEEDREAM_SEQUENTIAL)
    _int_in(errors, data, "width", SEEDREAM_MIN_SIDE, SEEDREAM_MAX_SIDE)
    _int_in(errors, data, "height", SEEDREAM_MIN_SIDE, SEEDREAM_MAX_SIDE)
    if "enhance_prompt" in data and not isinstance(data["enhance_prompt"], bool):
        errors.append(
            {"type": "invalid_type", "field": "input.enhance_prompt", "description": "Invalid type. Expected: boolean"}
        )
    images = _seedream_images(errors, data, SEEDREAM_MAX_IMAGE_INPUTS)
    _raise_if(errors)
    return images


def validate_seedream_5_lite_input(data: Any) -> list[bytes]:
    """Validate like the bytedance/seedream-5-lite schema: no custom size, no width or height."""
    errors = _object_with(data, SEEDREAM_5_FIELDS)
    _enum(errors, data, "size", SEEDREAM_5_SIZES)
    _enum(errors, data, "aspect_ratio", SEEDREAM_ASPECT_RATIOS)
    _enum(errors, data, "sequential_image_generation", SEEDREAM_SEQUENTIAL)
    _enum(errors, data, "output_format", SEEDREAM_5_OUTPUT_FORMATS)
    images = _seedream_images(errors, data, SEEDREAM_5_MAX_IMAGE_INPUTS)
    _raise_if(errors)
    return images


def _seedream_images(errors: list[dict[str, str]], data: dict[str, Any], max_inputs: int) -> list[bytes]:
    """max_images and image_input, as every Seedream schema checks them: input images plus the
    images asked for stay within MAX_IMAGES. Returns the decoded data-URI inputs."""
    _int_in(errors, data, "max_images", 1, MAX_IMAGES)
    inputs = data.get("image_input", [])
    images = _image_input(errors, inputs, max_inputs)
    count = data.get("max_images", 1)
    if isinstance(inputs, list) and isinstance(count, int) and len(inputs) + count > MAX_IMAGES:
        errors.append(
            {
                "type": "number_all_of",
                "field": "input.max_images",
                "description": f"Input images plus max_images must not exceed {MAX_IMAGES}",
            }
        )
    return images


def seedream_size(data: dict[str, Any], images: list[bytes]) -> tuple[int, int]:
    """Output pixels: width x height with size=custom; otherwise the tier's pixel count at the
    ratio (match_input_image: the first input's shape, else square), kept within 1024..4096 a
    side and rounded to multiples of 16 (the real per-tier table is UNCONFIRMED)."""
    size = data.get("size", "2K")
    if size == "custom":
        return int(data.get("width", 2048)), int(data.get("height", 2048))
    ratio_name = data.get("aspect_ratio", "match_input_image")
    if ratio_name == "match_input_image":
        w, h = image_size(images[0]) if images else (1, 1)
        ratio = w / h
    else:
        rw, rh = ratio_name.split(":")
        ratio = int(rw) / int(rh)
    pixels = (int(size[:-1]) * 1024) ** 2
    width, height = math.sqrt(pixels * ratio), math.sqrt(pixels / ratio)
    scale = max(1.0, SEEDREAM_MIN_SIDE / min(width, height))
    scale = min(scale, SEEDREAM_MAX_SIDE / max(width, height))

    def side(value: float) -> int:
        return min(SEEDREAM_MAX_SIDE, max(SEEDREAM_MIN_SIDE, round(value * scale / 16) * 16))

    return side(width), side(height)


def _check_headers(request: Request) -> tuple[str | None, str | None]:
    """`Prefer: wait[=1..60]` and `Cancel-After: <duration>`, either optional."""
    prefer = request.headers.get("prefer")
    if prefer is not None:
        match = _PREFER.fullmatch(prefer)
        if not match or (match[1] is not None and not 1 <= int(match[1]) <= MAX_PREFER_WAIT_S):
            raise _Reject(
                400,
                "Invalid Prefer header",
                f"Prefer must be 'wait' or 'wait=N' with N from 1 to {MAX_PREFER_WAIT_S}, got {prefer!r}.",
            )
    cancel_after = request.headers.get("cancel-after")
    if cancel_after is not None and not _DURATION.fullmatch(cancel_after.strip()):
        raise _Reject(
            400,
            "Invalid Cancel-After header",
            f"Cancel-After must be a duration such as '30s' or '1m', got {cancel_after!r}.",
        )
    return prefer, cancel_after


# --- the fake ------------------------------------------------------------------------------


class FakeReplicate(BaseFake):
    """Fake Replicate predictions upstream. `with FakeReplicate() as fake: fake.base_url`.

    Settings (reset() restores the constructor's): `api_key`; `processing_polls` (polls that
    answer `processing` before the terminal state); `instant` (answer a create that has
    `Prefer: wait` already finished); `array_output` (output is a list of URIs, seedream
    style, and `max_images` is accepted); `data_uri_output` (outputs are `data:` URIs);
    `known_models` (None: every owner/name exists).
    """

    def __init__(
        self,
        *,
        api_key: str = "test-replicate-token",
        processing_polls: int = 1,
        instant: bool = False,
        array_output: bool = False,
        data_uri_output: bool = False,
        known_models: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.processing_polls = processing_polls
        self.instant = instant
        self.array_output = array_output
        self.data_uri_output = data_uri_output
        self.known_models = known_models
        self.predictions: dict[str, Prediction] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # served at /files/{name}
        self.cancels = 0  # cancel requests received for known predictions
        self._settings = dict(
            api_key=api_key,
            processing_polls=processing_polls,
            instant=instant,
            array_output=array_output,
            data_uri_output=data_uri_output,
            known_models=known_models,
        )

    def reset(self) -> None:
        """Clear recordings/queue/counters/predictions/files and restore the constructor settings."""
        super().reset()
        self.predictions.clear()
        self.files.clear()
        self.cancels = 0
        for name, value in self._settings.items():
            setattr(self, name, value)

    @property
    def base_url(self) -> str:
        """What to give the client as base URL (it appends /v1/...)."""
        return self.url

    # --- recorded traffic, by kind ---
    @property
    def creates(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/predictions")]

    @property
    def polls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith("/v1/predictions/")]

    @property
    def cancel_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/cancel")]

    @property
    def downloads(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/files/")]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    def _check_auth(self, request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _Reject(401, "Unauthenticated", "You did not pass a valid authentication token")

    def _known(self, request: Request) -> Prediction:
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            raise _Reject(404, "Not found", "The requested resource could not be found.")
        return prediction

    # --- create ---
    async def _create(self, request: Request) -> Response:
        recorded = await self.record(request)
        async with self.track():
            model = f"{request.path_params['owner']}/{request.path_params['name']}"
            recorded.model = model
            try:
                prediction = self._parse_create(request, recorded, model)
            except _Reject as reject:
                return json_response(reject.status, reject.body)
            return await self._apply(self.next_behaviour(), request, prediction)

    def _parse_create(self, request: Request, recorded: RecordedRequest, model: str) -> Prediction:
        self._check_auth(request)
        if self.known_models is not None and model not in self.known_models:
            raise _Reject(404, "Not found", "The requested resource could not be found.")
        ok, recorded.json = parse_json(recorded.body)
        if not ok or not isinstance(recorded.json, dict):
            raise _Reject(400, "Invalid JSON", "The request body is not a valid JSON object.")
        prefer, cancel_after = _check_headers(request)
        if "input" not in recorded.json:
            raise _Reject(422, "Input validation failed", "- (root): input is required\n")
        data = recorded.json["input"]
        if model == SEEDREAM_4:
            images = validate_seedream_input(data)
        elif model == SEEDREAM_5_LITE:
            images = validate_seedream_5_lite_input(data)
        elif model == NANO_BANANA:
            images = validate_nano_banana_input(data)
        else:
            images = validate_input(data, allow_max_images=self.array_output)
        return Prediction(
            id=secrets.token_hex(10),
            model=model,
            input=recorded.json["input"],
            images=images,
            prefer=prefer,
            cancel_after=cancel_after,
            created_at=_now(),
        )

    async def _apply(self, behaviour: Any, request: Request, prediction: Prediction) -> Response:
        """Turn one scripted behaviour into the create's HTTP answer."""
        if isinstance(behaviour, (Hang, Delay)):
            await self.sleep(request, behaviour.seconds)
            behaviour = None
        if isinstance(behaviour, ReplicateError):
            headers = None if behaviour.retry_after_s is None else {"Retry-After": f"{behaviour.retry_after_s:g}"}
            return problem(behaviour.status, behaviour.title, behaviour.detail, headers)
        if isinstance(behaviour, MalformedJSON):
            return Response(
                behaviour.body or '{"id": "abc", "status": ', status_code=201, media_type="application/json"
            )
        if isinstance(behaviour, RawResponse):
            return raw_response(behaviour)
        if isinstance(behaviour, PollError):
            prediction.poll_errors_left = behaviour.times
        elif behaviour is not None and not isinstance(behaviour, _OUTCOMES):
            raise TypeError(f"FakeReplicate cannot apply behaviour {behaviour!r}")
        prediction.outcome = behaviour
        self.predictions[prediction.id] = prediction
        if self.instant and prediction.prefer is not None:
            await self._advance(prediction, to_the_end=True)
        return json_response(201, self.prediction_json(prediction))

    # --- lifecycle ---
    async def _advance(self, prediction: Prediction, *, to_the_end: bool = False) -> None:
        """One step of starting -> processing (x processing_polls) -> terminal."""
        if prediction.status in TERMINAL:
            return
        prediction.polls += 1
        if isinstance(prediction.outcome, PredictionStuck) or (
            not to_the_end and prediction.polls <= self.processing_polls
        ):
            prediction.status = "processing"
            prediction.started_at = prediction.started_at or _now()
            return
        await self._finish(prediction)

    async def _finish(self, prediction: Prediction) -> None:
        outcome = prediction.outcome
        prediction.started_at = prediction.started_at or _now()
        prediction.completed_at = _now()
        if isinstance(outcome, PredictionFails):
            prediction.status, prediction.error = "failed", outcome.error
        elif isinstance(outcome, CapacityFailure):
            prediction.status, prediction.error = "failed", CAPACITY_ERROR
        elif isinstance(outcome, PredictionCanceled):
            prediction.status = outcome.status
        else:
            uris = await run_in_threadpool(self._outputs, prediction)
            prediction.status = "succeeded"
            prediction.output = uris if self.array_output or prediction.model in SEEDREAM_MODELS else uris[0]

    def output_size(self, prediction: Prediction) -> tuple[int, int]:
        """Pixel size from the Pro table (the Flash table for google/nano-banana, seedream_size for
        bytedance/seedream-4); match_input_image follows the first input image."""
        if prediction.model in SEEDREAM_MODELS:
            return seedream_size(prediction.input, prediction.images)
        ratio = prediction.input.get("aspect_ratio", "match_input_image")
        if ratio == "match_input_image":
            ratio = nearest_ratio(*image_size(prediction.images[0])) if prediction.images else "1:1"
        if prediction.model == NANO_BANANA:
            return FLASH_SIZES[ratio]
        return PRO_SIZES[(ratio, prediction.input.get("resolution", "2K"))]

    @staticmethod
    def output_count(prediction: Prediction) -> int:
        """max_images images; seedream makes more than one only with sequential_image_generation=auto."""
        if prediction.model in SEEDREAM_MODELS and prediction.input.get("sequential_image_generation") != "auto":
            return 1
        return int(prediction.input.get("max_images", 1))

    def _outputs(self, prediction: Prediction) -> list[str]:
        """Image i is a solid color_for(prompt) (i == 0) or color_for(f"{prompt}#{i}")."""
        outcome = prediction.outcome
        fmt = prediction.input.get("output_format", "png" if prediction.model == SEEDREAM_5_LITE else "jpg")
        mime = MIME_BY_OUTPUT_FORMAT[fmt]
        width, height = self.output_size(prediction)
        prompt = prediction.input["prompt"]
        uris = []
        for i in range(self.output_count(prediction)):
            data = solid_image(mime, width, height, color_for(prompt if i == 0 else f"{prompt}#{i}"))
            name = f"{prediction.id}-{i}.{fmt}"
            if isinstance(outcome, OutputNotImage):
                data, mime = outcome.body, outcome.content_type
            if self.data_uri_output and not isinstance(outcome, OutputMissing):
                uris.append(f"data:{mime};base64," + base64.b64encode(data).decode("ascii"))
                continue
            if not isinstance(outcome, OutputMissing):
                self.files[name] = (data, mime)
            uris.append(f"{self.url}/files/{name}")
        return uris

    def prediction_json(self, prediction: Prediction) -> dict[str, Any]:
        get = f"{self.url}/v1/predictions/{prediction.id}"
        body: dict[str, Any] = {
            "id": prediction.id,
            "model": prediction.model,
            "version": "hidden",
            "input": prediction.input,
            "logs": "",
            "output": prediction.output,
            "data_removed": False,
            "error": prediction.error,
            "source": "api",
            "status": prediction.status,
            "created_at": prediction.created_at,
            "started_at": prediction.started_at,
            "completed_at": prediction.completed_at,
            "deadline": None,
            "urls": {
                "get": get,
                "cancel": f"{get}/cancel",
                "web": f"https://replicate.com/p/{prediction.id}",
                "stream": f"{self.url}/v1/streams/{prediction.id}",
            },
        }
        if prediction.status == "succeeded":
            body["metrics"] = {"predict_time": 8.1, "total_time": 9.0, "image_count": 1}
        return body

    # --- get / cancel / files ---
    async def _get(self, request: Request) -> Response:
        await self.record(request)
        async with self.track():
            try:
                self._check_auth(request)
                prediction = self._known(request)
            except _Reject as reject:
                return json_response(reject.status, reject.body)
            if prediction.poll_errors_left > 0 and isinstance(prediction.outcome, PollError):
                prediction.poll_errors_left -= 1
                error = prediction.outcome
                headers = None if error.retry_after_s is None else {"Retry-After": f"{error.retry_after_s:g}"}
                return problem(error.status, "Error", error.detail, headers)
            await self._advance(prediction)
            return json_response(200, self.prediction_json(prediction))

    async def _cancel(self, request: Request) -> Response:
        await self.record(request)
        try:
            self._check_auth(request)
            prediction = self._known(request)
        except _Reject as reject:
            return json_response(reject.status, reject.body)
        self.cancels += 1
        if prediction.status not in TERMINAL:
            prediction.status, prediction.completed_at = "canceled", _now()
        return json_response(200, self.prediction_json(prediction))

    async def _file(self, request: Request) -> Response:
        """Output files, public like replicate.delivery (no auth)."""
        await self.record(request)
        name = request.path_params["name"]
        if name not in self.files:
            return Response("Not Found", status_code=404, media_type="text/plain")
        data, mime = self.files[name]
        return Response(data, media_type=mime)


_OUTCOMES = (PredictionFails, CapacityFailure, PredictionCanceled, PredictionStuck, OutputMissing, OutputNotImage)
