"""Fake OpenAI-compatible Images upstream (`/v1/images/generations`, `/v1/images/edits`).

Speaks the wire format of the provider wire-format reference (the spec), section 1, over real
loopback HTTP: JSON and multipart bodies (`image` or repeated `image[]`, `mask`), OpenAI error bodies with the
status codes the SDK maps to exceptions, and `url` responses served from `/files/`.

`stream=true` (a JSON field or a form field) answers with OpenAI's image event stream (the spec
1.5; openai-python types/image_gen_*_event.py, image_edit_*_event.py): `event: <type>` and
`data: <json>` per event, the data's `type` repeating the name; `partial_images` (0 to 3) partial
images first, each a distinct small image (`partial_color(i)`), then one completed event per
image with its usage (the request's input counted on the first). `Streamed` scripts delays, a
gate before the completed event, an error event mid-stream, a dropped connection and `[DONE]`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .common import (
    BaseFake,
    Delay,
    FilePart,
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
    "Delay",
    "FakeOpenAI",
    "FilePart",
    "Hang",
    "MalformedJSON",
    "OpenAIError",
    "RawResponse",
    "RecordedRequest",
    "Streamed",
    "partial_color",
]

MIME_BY_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
INPUT_MIMES = set(MIME_BY_FORMAT.values())
MAX_SIDE = 4096
MAX_INPUT_IMAGES = 16
OUTPUT_TOKENS_PER_IMAGE = 1056
INPUT_TOKENS_PER_IMAGE = 323

_COMMON = {
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "stream",
    "partial_images",
    "user",
}
GENERATION_PARAMS = _COMMON | {"moderation", "style"}
EDIT_FORM_PARAMS = _COMMON | {"input_fidelity"}  # plus the image / image[] / mask files
EDIT_JSON_PARAMS = (_COMMON - {"response_format"}) | {"images", "mask", "moderation", "input_fidelity"}
# What GPT image models (gpt-image-1) take as `size` (the provider wire-format reference, section 1.1).
GPT_IMAGE_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
# gpt-image-2's WxH rules (the provider wire-format reference 1.1; OpenAI's imagegen skill,
# references/image-api.md): sides multiples of 16, longest edge 3840, long:short at most 3:1,
# 655,360 to 8,294,400 pixels.
FLEX_STEP, FLEX_MAX_EDGE, FLEX_MAX_RATIO, FLEX_MIN_PIXELS, FLEX_MAX_PIXELS = 16, 3840, 3, 655_360, 8_294_400
# The rules the real API applies per GPT image model, for `FakeOpenAI.with_gpt_image_rules()`.
GPT_IMAGE_MODELS = frozenset(
    {"gpt-image-1", "gpt-image-1.5", "gpt-image-1-mini", "gpt-image-2", "chatgpt-image-latest"}
)
NO_INPUT_FIDELITY_MODELS = frozenset({"gpt-image-1-mini", "gpt-image-2"})  # spec 1.2; gpt-image-2: always high
OPAQUE_ONLY_MODELS = frozenset({"gpt-image-2"})  # no transparent backgrounds


@dataclass(frozen=True)
class OpenAIError:
    """Answer with HTTP `status` and an OpenAI error body; `retry_after_s` sets Retry-After
    (seconds), `headers` adds any others (e.g. {"x-should-retry": "false"})."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after_s: float | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Streamed:
    """Answer a stream=true request with this event stream (what a stream=true request gets
    when nothing is scripted is `Streamed()`): `partials` partial images (None: the request's
    `partial_images`), then one completed event per image. `delay` seconds pass before each event
    after the first. `error`: sent as an error event after `error_after` partial events, in place
    of the rest; as `{"error": {...}}` (what openai-python's _streaming.py reads), or with `flat`
    as the Responses API's `{"type": "error", "code", "message", "param"}`. `drop_after`: the
    connection is closed after that many events, without ending the response. `done`: a
    `data: [DONE]` ends the stream."""

    partials: int | None = None
    delay: float = 0.0
    error: OpenAIError | None = None
    error_after: int = 0
    flat: bool = False
    drop_after: int | None = None
    done: bool = False
    # The first completed event waits until the test sets this: a test can show the partial
    # images reach the client before the final image is even sent.
    gate: threading.Event | None = field(default=None, compare=False)


def partial_color(index: int) -> tuple[int, int, int]:
    """The colour of partial image `index` (8x8): each differs from the others and the final's."""
    return (250, 20 + 60 * index, 200)


class _Reject(Exception):
    """A request the real API would refuse, with the OpenAI error to send."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error = OpenAIError(status, message, type, code, param)


def error_response(error: OpenAIError) -> Response:
    headers = dict(error.headers or {})
    if error.retry_after_s is not None:
        headers["retry-after"] = f"{error.retry_after_s:g}"
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return json_response(error.status, body, headers)


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> _Reject:
    return _Reject(400, message, param=param, code=code)


# --- option parsing (shared by all three request shapes) -----------------------------------


@dataclass
class ImageJob:
    """What to generate, after validation."""

    prompt: str
    n: int = 1
    width: int = 1024
    height: int = 1024
    output_format: str = "png"
    response_format: str = "b64_json"
    compression: int = 100
    background: str = "auto"
    quality: str = "auto"
    input_images: list[bytes] = field(default_factory=list)
    stream: bool = False
    partial_images: int = 0


def _as_int(value: Any, param: str, low: int, high: int) -> int:
    """Ints arrive as JSON numbers or multipart strings."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise _bad(f"Invalid type for '{param}': expected an integer, but got {kind} instead.", param, "invalid_type")
    if value < low:
        raise _bad(
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param,
            "integer_below_min_value",
        )
    if value > high:
        raise _bad(
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            param,
            "integer_above_max_value",
        )
    return value


def _choice(fields: dict[str, Any], param: str, allowed: tuple[str, ...], default: str) -> str:
    value = fields.get(param)
    if value is None or value == "":
        return default
    if value not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed)
        raise _bad(f"Invalid value: '{value}'. Supported values are: {listed}.", param)
    return str(value)


def _size(value: Any) -> tuple[int, int]:
    if value is None or value in ("", "auto"):
        return 1024, 1024
    match = re.fullmatch(r"(\d+)x(\d+)", str(value))
    if not match or not all(1 <= int(side) <= MAX_SIDE for side in match.groups()):
        raise _bad(
            f"Invalid value: '{value}'. Supported values are: '1024x1024', '1024x1536', "
            "'1536x1024', and 'auto' (or WxH).",
            "size",
        )
    return int(match[1]), int(match[2])


def _check_flexible_size(size: str) -> None:
    """gpt-image-2's rules; the message names the one broken (its wording is the fake's own)."""
    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if not match:
        raise _bad(f"Invalid value: '{size}'. Expected 'auto' or WIDTHxHEIGHT.", "size")
    width, height = int(match[1]), int(match[2])
    broken = (
        "both edges must be multiples of 16"
        if width % FLEX_STEP or height % FLEX_STEP
        else "the longest edge must be at most 3840"
        if max(width, height) > FLEX_MAX_EDGE
        else "the long edge may be at most 3 times the short edge"
        if max(width, height) > FLEX_MAX_RATIO * min(width, height)
        else "the image must have 655,360 to 8,294,400 pixels"
        if not FLEX_MIN_PIXELS <= width * height <= FLEX_MAX_PIXELS
        else None
    )
    if broken:
        raise _bad(f"Invalid size '{size}': {broken}.", "size")


JPEG_COMMENT = b"made by FakeOpenAI"


def _signed(image: bytes) -> bytes:
    """A JPEG gets a comment segment (COM) after its start marker, which any re-encode drops: a
    test can tell the upstream's own bytes from a conversion even where both encoders agree."""
    if not image.startswith(b"\xff\xd8"):
        return image
    return image[:2] + b"\xff\xfe" + (len(JPEG_COMMENT) + 2).to_bytes(2, "big") + JPEG_COMMENT + image[2:]


def _is_true(value: Any) -> bool:
    return value is True or value == "true"


def parse_job(fields: dict[str, Any], allowed: set[str], strict: bool) -> ImageJob:
    """Validate the parameters common to generations and edits."""
    if strict:
        for name in fields:
            if name not in allowed:
                raise _bad(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    job = ImageJob(prompt=prompt, stream=_is_true(fields.get("stream")))
    if fields.get("partial_images") not in (None, ""):
        job.partial_images = _as_int(fields["partial_images"], "partial_images", 0, 3)
    if fields.get("n") not in (None, ""):
        job.n = _as_int(fields["n"], "n", 1, 10)
    if fields.get("output_compression") not in (None, ""):
        job.compression = _as_int(fields["output_compression"], "output_compression", 0, 100)
    job.width, job.height = _size(fields.get("size"))
    job.output_format = _choice(fields, "output_format", ("png", "jpeg", "webp"), "png")
    job.response_format = _choice(fields, "response_format", ("url", "b64_json"), "b64_json")
    job.background = _choice(fields, "background", ("transparent", "opaque", "auto"), "auto")
    job.quality = _choice(fields, "quality", ("auto", "low", "medium", "high", "standard", "hd"), "auto")
    if job.background == "transparent" and job.output_format == "jpeg":
        raise _bad("Transparent background is not supported for output_format 'jpeg'.", "background")
    return job


def _check_input_image(data: bytes, index: int, param: str = "image") -> None:
    if detect_mime(data) not in INPUT_MIMES:
        raise _bad(
            f"Invalid image file or mode for image {index + 1}, please check your image file.",
            param,
            "invalid_image_file",
        )


def _check_image_count(count: int, param: str) -> None:
    if count == 0:
        raise _bad(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if count > MAX_INPUT_IMAGES:
        raise _bad(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{MAX_INPUT_IMAGES}, but got an array with length {count} instead.",
            param,
            "array_above_max_length",
        )


def _check_mask(mask: bytes, first_image: bytes) -> None:
    if detect_mime(mask) != "image/png":
        raise _bad("Invalid mask image format - mask must be a PNG.", "mask", "invalid_image_file")
    if image_size(mask) != image_size(first_image):
        raise _bad("Invalid mask image format - mask size does not match image size", "mask", "invalid_image_file")


def _decode_data_url(url: str, where: str) -> bytes:
    match = re.fullmatch(r"data:([\w.+/-]+);base64,(.*)", url, flags=re.DOTALL)
    if not match:
        raise _bad(f"Invalid '{where}': expected a base64-encoded data URL.", where, "invalid_image_url")
    try:
        return base64.b64decode(match[2], validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"Invalid '{where}': base64 decoding failed.", where, "invalid_image_url") from None


def _image_ref(ref: Any, where: str) -> bytes | None:
    """An ImageRefParam holds exactly one of image_url / file_id; data URLs are checked."""
    if not isinstance(ref, dict) or len(ref) != 1 or next(iter(ref)) not in ("image_url", "file_id"):
        raise _bad(
            f"Invalid '{where}': expected an object with exactly one of 'image_url' or 'file_id'.",
            where,
            "invalid_type",
        )
    url = ref.get("image_url")
    if isinstance(url, str) and url.startswith("data:"):
        return _decode_data_url(url, f"{where}.image_url")
    return None  # remote URL / file id: accepted, not fetched


# --- the fake ------------------------------------------------------------------------------


class FakeOpenAI(BaseFake):
    """Fake OpenAI Images upstream. `with FakeOpenAI() as fake: fake.base_url` (.../v1).

    Opt-in GPT image model strictness (both empty by default, so any model takes anything):
    `reject_response_format_models` - models that answer 400 unknown_parameter to any
    `response_format` (GPT image models always return b64_json and refuse the field);
    `fixed_size_models` - models that take only GPT_IMAGE_SIZES as `size`;
    `flexible_size_models` - models that take WxH only within gpt-image-2's rules (FLEX_*);
    `no_input_fidelity_models` - models that answer 400 to any `input_fidelity`;
    `opaque_only_models` - models that answer 400 to `background=transparent`.
    `with_gpt_image_rules()` turns all of them on for the real GPT image models. `served` holds
    the bytes of every image the fake answered with, in order (to check the gateway's pass-through).
    """

    def __init__(
        self,
        *,
        api_key: str = "test-openai-key",
        strict_params: bool = False,
        reject_response_format_models: set[str] | None = None,
        fixed_size_models: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.strict_params = strict_params  # True: unknown parameters -> 400 unknown_parameter
        self.reject_response_format_models: set[str] = set(reject_response_format_models or ())
        self.fixed_size_models: set[str] = set(fixed_size_models or ())
        self.flexible_size_models: set[str] = set()
        self.no_input_fidelity_models: set[str] = set()
        self.opaque_only_models: set[str] = set()
        self.files: dict[str, tuple[bytes, str]] = {}  # served at /files/{name}
        self.downloads: list[str] = []  # names fetched from /files/
        self.served: list[bytes] = []  # every image answered, in order
        self._settings = dict(
            api_key=api_key,
            strict_params=strict_params,
            reject_response_format_models=frozenset(reject_response_format_models or ()),
            fixed_size_models=frozenset(fixed_size_models or ()),
        )

    def reset(self) -> None:
        """Clear recordings/queue/counters/files and restore the constructor settings."""
        super().reset()
        self.files.clear()
        self.downloads.clear()
        self.served.clear()
        self.flexible_size_models, self.no_input_fidelity_models, self.opaque_only_models = set(), set(), set()
        for name, value in self._settings.items():
            setattr(self, name, set(value) if isinstance(value, frozenset) else value)

    def with_gpt_image_rules(self) -> FakeOpenAI:
        """Refuse what the real API refuses per GPT image model (see the class docstring)."""
        self.reject_response_format_models |= GPT_IMAGE_MODELS
        self.fixed_size_models |= GPT_IMAGE_MODELS - {"gpt-image-2"}
        self.flexible_size_models |= {"gpt-image-2"}
        self.no_input_fidelity_models |= NO_INPUT_FIDELITY_MODELS
        self.opaque_only_models |= OPAQUE_ONLY_MODELS
        return self

    @property
    def base_url(self) -> str:
        """What the openai SDK wants as base_url ("http://127.0.0.1:PORT/v1")."""
        return self.url + "/v1"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/images/generations", self._generations, methods=["POST"]),
                Route("/v1/images/edits", self._edits, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    async def _generations(self, request: Request) -> Response:
        return await self._serve(request, self._parse_generation)

    async def _edits(self, request: Request) -> Response:
        return await self._serve(request, self._parse_edit)

    async def _serve(self, request: Request, parse: Any) -> Response:
        """Record, authenticate, validate, then apply the next scripted behaviour."""
        recorded = await self.record(request)
        async with self.track():
            try:
                self._check_auth(request)
                job = await parse(request, recorded)
            except _Reject as reject:
                return error_response(reject.error)
            return await self._apply(self.next_behaviour(), request, job)

    def _check_auth(self, request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _Reject(401, "Incorrect API key provided", code="invalid_api_key")

    def _check_model_rules(self, fields: dict[str, Any]) -> None:
        """The opt-in GPT image model rules (see the class docstring)."""
        model = fields.get("model")
        if model in self.reject_response_format_models and fields.get("response_format") not in (None, ""):
            raise _bad("Unknown parameter: 'response_format'.", "response_format", "unknown_parameter")
        size = fields.get("size")
        if model in self.fixed_size_models and size not in (None, "") and size not in GPT_IMAGE_SIZES:
            raise _bad(
                f"Invalid value: '{size}'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'.",
                "size",
            )
        if model in self.flexible_size_models and size not in (None, "", "auto"):
            _check_flexible_size(str(size))
        if model in self.no_input_fidelity_models and fields.get("input_fidelity") not in (None, ""):
            raise _bad(
                f"Invalid parameter: 'input_fidelity' is not supported for model '{model}'.",
                "input_fidelity",
                "unsupported_parameter",
            )
        if model in self.opaque_only_models and fields.get("background") == "transparent":
            raise _bad(
                f"Invalid value: 'transparent'. Transparent backgrounds are not supported for model '{model}'.",
                "background",
                "invalid_value",
            )

    async def _parse_generation(self, request: Request, recorded: RecordedRequest) -> ImageJob:
        body = self._json_body(recorded)
        self._check_model_rules(body)
        return parse_job(body, GENERATION_PARAMS, self.strict_params)

    async def _parse_edit(self, request: Request, recorded: RecordedRequest) -> ImageJob:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            return await self._parse_multipart_edit(request, recorded)
        if content_type.startswith("application/json"):
            return self._parse_json_edit(recorded)
        raise _bad(
            f"Invalid Content-Type header ({content_type}), expected multipart/form-data or application/json.",
            None,
            None,
        )

    def _json_body(self, recorded: RecordedRequest) -> dict[str, Any]:
        ok, body = parse_json(recorded.body)
        recorded.json = body
        if not ok or not isinstance(body, dict):
            raise _bad(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
                None,
                None,
            )
        recorded.model = body.get("model")
        return body

    def _parse_json_edit(self, recorded: RecordedRequest) -> ImageJob:
        body = self._json_body(recorded)
        refs = body.get("images")
        if not isinstance(refs, list):
            raise _bad("Missing required parameter: 'images'.", "images", "missing_required_parameter")
        _check_image_count(len(refs), "images")
        images = [_image_ref(ref, f"images[{i}]") for i, ref in enumerate(refs)]
        for i, data in enumerate(images):
            if data is not None:
                _check_input_image(data, i, "images")
        if body.get("mask") is not None:
            mask = _image_ref(body["mask"], "mask")
            if mask is not None and images[0] is not None:
                _check_mask(mask, images[0])
        self._check_model_rules(body)
        job = parse_job(body, EDIT_JSON_PARAMS, self.strict_params)
        job.input_images = [data for data in images if data is not None]
        return job

    async def _parse_multipart_edit(self, request: Request, recorded: RecordedRequest) -> ImageJob:
        fields, files = await self._read_multipart(request, recorded)
        for name in ("image", "image[]", "mask"):
            if name in fields:
                raise _bad(
                    f"Invalid type for '{name}': expected a file, but got a string instead.", name, "invalid_type"
                )
        images = [part.data for part in files if part.field_name in ("image", "image[]")]
        _check_image_count(len(images), "image")
        for i, data in enumerate(images):
            _check_input_image(data, i)
        masks = [part.data for part in files if part.field_name == "mask"]
        if masks:
            _check_mask(masks[0], images[0])
        allowed = EDIT_FORM_PARAMS | {"image", "image[]", "mask"}
        self._check_model_rules(fields)
        job = parse_job(fields | {p.field_name: "" for p in files}, allowed, self.strict_params)
        job.input_images = images
        return job

    async def _read_multipart(
        self, request: Request, recorded: RecordedRequest
    ) -> tuple[dict[str, str], list[FilePart]]:
        """Record text fields and file parts (in order) from a multipart body."""
        items: list[tuple[str, str]] = []
        files: list[FilePart] = []
        async with request.form(max_part_size=64 * 1024 * 1024) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.append(FilePart(name, value.filename, value.content_type, await value.read()))
                else:
                    items.append((name, value))
        recorded.form_items, recorded.files = items, files
        recorded.form = dict(items)
        recorded.model = recorded.form.get("model")
        return recorded.form, files

    async def _apply(self, behaviour: Any, request: Request, job: ImageJob) -> Response:
        """Turn one scripted behaviour (None = success) into the HTTP answer."""
        if isinstance(behaviour, (Hang, Delay)):
            await self.sleep(request, behaviour.seconds)
            behaviour = None
        if job.stream and behaviour is None:
            behaviour = Streamed()
        if isinstance(behaviour, Streamed):
            return await self._stream(request, job, behaviour)
        if isinstance(behaviour, OpenAIError):
            return error_response(behaviour)
        if isinstance(behaviour, MalformedJSON):
            return Response(behaviour.body or '{"created": 1, "data": [', media_type="application/json")
        if isinstance(behaviour, RawResponse):
            return raw_response(behaviour)
        if behaviour is None:
            return await self._success(job)
        raise TypeError(f"FakeOpenAI cannot apply behaviour {behaviour!r}")

    async def _success(self, job: ImageJob) -> Response:
        images = await run_in_threadpool(self._render, job)
        self.served.extend(images)
        return json_response(200, self._images_response(job, images))

    async def _stream(self, request: Request, job: ImageJob, streamed: Streamed) -> Response:
        """The stream's events, rendered up front (the scripted timing is the sending's)."""
        images = await run_in_threadpool(self._render, job)
        self.served.extend(images)
        family = "image_edit" if request.url.path.endswith("/edits") else "image_generation"
        mime = MIME_BY_FORMAT[job.output_format]
        count = job.partial_images if streamed.partials is None else streamed.partials
        events: list[tuple[str, dict[str, Any]]] = []
        for index in range(count):
            partial = solid_image(mime, 8, 8, partial_color(index))
            events.append((f"{family}.partial_image", self._event(job, family, "partial_image", partial)))
            events[-1][1]["partial_image_index"] = index
        if streamed.error is not None:
            events = events[: streamed.error_after] + [("error", _error_event(streamed.error, flat=streamed.flat))]
        else:
            whole = self._images_response(job, images)["usage"]
            for index, image in enumerate(images):
                event = self._event(job, family, "completed", image)
                event["usage"] = _image_usage(whole, first=index == 0, images=len(images))
                events.append((f"{family}.completed", event))
        return EventStream(self, request, events, streamed)

    def _event(self, job: ImageJob, family: str, kind: str, image: bytes) -> dict[str, Any]:
        return {
            "type": f"{family}.{kind}",
            "b64_json": base64.b64encode(image).decode("ascii"),
            "background": "transparent" if job.background == "transparent" else "opaque",
            "created_at": int(time.time()),
            "output_format": job.output_format,
            "quality": "medium" if job.quality == "auto" else job.quality,
            "size": f"{job.width}x{job.height}",
        }

    def _render(self, job: ImageJob) -> list[bytes]:
        """Image i is a solid color_for(prompt) (i == 0) or color_for(f"{prompt}#{i}")."""
        mime = MIME_BY_FORMAT[job.output_format]
        quality = job.compression if job.compression < 100 else 90
        out = []
        for i in range(job.n):
            color: tuple[int, ...] = color_for(job.prompt if i == 0 else f"{job.prompt}#{i}")
            if job.background == "transparent":
                color = (*color, 0)
            out.append(_signed(solid_image(mime, job.width, job.height, color, quality)))
        return out

    def _images_response(self, job: ImageJob, images: list[bytes]) -> dict[str, Any]:
        data = [self._datum(job, image) for image in images]
        text_tokens = len(job.prompt.split())
        image_tokens = INPUT_TOKENS_PER_IMAGE * len(job.input_images)
        output_tokens = OUTPUT_TOKENS_PER_IMAGE * len(images)
        return {
            "created": int(time.time()),
            "data": data,
            "background": "transparent" if job.background == "transparent" else "opaque",
            "output_format": job.output_format,
            "size": f"{job.width}x{job.height}",
            "quality": "medium" if job.quality == "auto" else job.quality,
            "usage": {
                "total_tokens": text_tokens + image_tokens + output_tokens,
                "input_tokens": text_tokens + image_tokens,
                "output_tokens": output_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens_details": {"text_tokens": 0, "image_tokens": output_tokens},
            },
        }

    def _datum(self, job: ImageJob, image: bytes) -> dict[str, Any]:
        if job.response_format == "url":
            name = f"{secrets.token_hex(8)}.{job.output_format}"
            self.files[name] = (image, MIME_BY_FORMAT[job.output_format])
            return {"url": f"{self.url}/files/{name}", "revised_prompt": job.prompt}
        return {"b64_json": base64.b64encode(image).decode("ascii"), "revised_prompt": job.prompt}

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.files:
            return Response("Not Found", status_code=404, media_type="text/plain")
        self.downloads.append(name)
        data, mime = self.files[name]
        return Response(data, media_type=mime)


def _error_event(error: OpenAIError, *, flat: bool) -> dict[str, Any]:
    body = {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    if flat:  # the Responses API's ResponseErrorEvent: type "error", its fields at the top
        return {"type": "error", "code": error.code, "message": error.message, "param": error.param}
    return {"error": body}


def _image_usage(whole: dict[str, Any], *, first: bool, images: int) -> dict[str, Any]:
    """One completed event's usage: its image's output tokens, and the request's input on the
    first event only, so the events add up to the JSON answer's usage."""
    output = whole["output_tokens"] // images
    inputs = whole["input_tokens"] if first else 0
    details = whole["input_tokens_details"] if first else {"text_tokens": 0, "image_tokens": 0}
    return {
        "total_tokens": inputs + output,
        "input_tokens": inputs,
        "output_tokens": output,
        "input_tokens_details": dict(details),
        "output_tokens_details": {"text_tokens": 0, "image_tokens": output},
    }


class EventStream(Response):
    """`text/event-stream`, `event: <type>` + `data: <json>` + a blank line per event, written as
    each is due (see `Streamed`); the client going away stops it."""

    media_type = "text/event-stream"

    def __init__(
        self, fake: BaseFake, request: Request, events: list[tuple[str, dict[str, Any]]], streamed: Streamed
    ) -> None:
        super().__init__(media_type=self.media_type)
        self.fake, self.request, self.events, self.streamed = fake, request, events, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamed = self.streamed
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with self.fake.track():
            for index, (name, data) in enumerate(self.events):
                if index == streamed.drop_after:
                    return  # uvicorn closes the connection of a response left unfinished
                if index and streamed.delay and not await self.fake.sleep(self.request, streamed.delay):
                    return
                if streamed.gate is not None and name.endswith(".completed"):
                    while not streamed.gate.is_set():  # the test thread sets it
                        if not await self.fake.sleep(self.request, 0.01):
                            return
                event = f"event: {name}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n" if streamed.done else b""})
