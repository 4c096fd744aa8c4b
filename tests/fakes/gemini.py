"""Fake Gemini API (`POST /v1beta/models/{model}:generateContent`) on real loopback HTTP.

Mirrors the wire format in the provider wire-format reference (the spec), section 2: proto-JSON
requests (camelCase or snake_case), Google error bodies, HTTP-200 safety outcomes and "thinking"
interim images, so gateway bugs show up as the same 400s/edge cases the real API would produce.

`:streamGenerateContent?alt=sse` answers the same request as an event stream, as google-genai
reads it (`_api_client.py`: `data: <json>` lines, a blank line after each; simonw/llm-gemini#97
shows a live one): each chunk one GenerateContentResponse, usageMetadata on every chunk (growing),
finishReason on the last. By default 2 thought images (each a different colour) come first, then
the answer; `Streamed` scripts other chunks, delays and a connection dropped mid-stream. Thought
images come only with `thinkingConfig.includeThoughts` (python-genai types.ThinkingConfig: "If
true, thoughts are returned"). Without `alt=sse` the stream is one JSON array of the chunks.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

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
from .images import color_for, detect_mime, image_size, solid_image, solid_png

__all__ = [
    "ASPECT_RATIOS",
    "FLASH_MODELS",
    "FLASH_SIZES",
    "IMAGE_SIZES",
    "PRO_SIZES",
    "Delay",
    "FakeGemini",
    "FinishBlocked",
    "GeminiError",
    "Hang",
    "MalformedJSON",
    "PromptBlocked",
    "RawResponse",
    "RecordedRequest",
    "Streamed",
    "TextOnly",
    "finish_chunk",
    "image_chunk",
    "text_chunk",
    "thought_chunk",
    "thought_color",
]

ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGE_SIZES = ("1K", "2K", "4K")

# Nano Banana Pro output pixels per (aspectRatio, imageSize): the Nano Banana Pro product page (the spec).
PRO_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("4:3", "1K"): (1183, 887),
    ("4:5", "1K"): (916, 1145),
    ("5:4", "1K"): (1145, 916),
    ("1:1", "1K"): (1024, 1024),
    ("3:4", "1K"): (887, 1182),
    ("2:3", "1K"): (836, 1254),
    ("3:2", "1K"): (1254, 836),
    ("9:16", "1K"): (768, 1365),
    ("16:9", "1K"): (1365, 768),
    ("21:9", "1K"): (1563, 670),
    ("21:9", "2K"): (3129, 1341),
    ("3:4", "2K"): (1774, 2365),
    ("4:3", "2K"): (2365, 1774),
    ("4:5", "2K"): (1832, 2290),
    ("5:4", "2K"): (2290, 1832),
    ("9:16", "2K"): (1536, 2731),
    ("16:9", "2K"): (2731, 1536),
    ("1:1", "2K"): (2048, 2048),
    ("2:3", "2K"): (1672, 2508),
    ("3:2", "2K"): (2508, 1672),
    ("3:4", "4K"): (3548, 4730),
    ("2:3", "4K"): (3345, 5017),
    ("5:4", "4K"): (4580, 3664),
    ("1:1", "4K"): (4096, 4096),
    ("9:16", "4K"): (3072, 5461),
    ("16:9", "4K"): (5461, 3072),
    ("4:3", "4K"): (4729, 3547),
    ("3:2", "4K"): (5016, 3344),
    ("4:5", "4K"): (3663, 4579),
    ("21:9", "4K"): (6256, 2681),
}

# Nano Banana (gemini-2.5-flash-image) has one size per aspectRatio (1K only; imageSize is
# ignored, the provider wire-format reference, section 2.2), and it does not "think", so it sends no interim images.
FLASH_MODELS = frozenset({"gemini-2.5-flash-image"})
FLASH_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}

USAGE = {"promptTokenCount": 17, "candidatesTokenCount": 1290, "totalTokenCount": 1307}
PROMPT_TOKENS, IMAGE_OUTPUT_TOKENS = 17, 1290
INPUT_IMAGE_TOKENS = 560  # what Gemini 3 Pro Image counts per input image
THOUGHT_COLOR = (255, 0, 255)  # the 8x8 interim "thought" image is magenta

# Field names the real API knows (camelCase; snake_case is accepted and canonicalised).
_TOP_LEVEL = {
    "contents",
    "generationConfig",
    "safetySettings",
    "tools",
    "systemInstruction",
    "toolConfig",
    "cachedContent",
}
_CONTENT = {"role", "parts"}
_PART_DATA = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
}
_PART = _PART_DATA | {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
_BLOB = {"mimeType", "data"}
_GENERATION_CONFIG = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
}
_IMAGE_CONFIG = {"aspectRatio", "imageSize"}  # the rest of ImageConfig is Vertex-only
_THINKING_CONFIG = {"includeThoughts", "thinkingBudget", "thinkingLevel"}  # python-genai types.ThinkingConfig
_MODALITIES = {"TEXT", "IMAGE", "AUDIO"}


# --- scripted behaviours -----------------------------------------------------------------


@dataclass(frozen=True)
class GeminiError:
    """Answer with HTTP `status` and Google's error body; `retry_after_s` adds a RetryInfo
    detail (retryDelay "Ns"), which is where Google puts the back-off hint (no header)."""

    status: int
    google_status: str
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class PromptBlocked:
    """HTTP 200, no candidates, `promptFeedback.blockReason` (+ `blockReasonMessage`)."""

    reason: str = "SAFETY"
    message: str | None = None


@dataclass(frozen=True)
class FinishBlocked:
    """HTTP 200, one candidate with `finishReason=reason`, a text part and no image."""

    reason: str = "IMAGE_SAFETY"
    message: str | None = None


@dataclass(frozen=True)
class TextOnly:
    """HTTP 200, finishReason STOP, only a text part (the model "forgot" the image)."""

    text: str = "I can describe it, but here is no image."


@dataclass(frozen=True)
class Streamed:
    """Answer a streamGenerateContent call with these `chunks` (GenerateContentResponse dicts,
    one event each; see the chunk helpers below), or, left None, with the usual ones for the
    request: `thought_images` thought images, then the answer (`thoughts_last`: the thought
    images after it, since the order is not confirmed), then the finish chunk. `delay` seconds
    pass before each chunk after the first. `drop_after`: the connection is closed after that
    many chunks, without ending the response (a dropped connection mid-stream)."""

    chunks: tuple[dict[str, Any], ...] | None = None
    thought_images: int = 2
    thoughts_last: bool = False
    delay: float = 0.0
    drop_after: int | None = None
    # The answer chunk (the first with a non-thought image) waits until the test sets this: a
    # test can show partial images reach the client before the final image is even sent.
    gate: threading.Event | None = field(default=None, compare=False)


class _Reject(Exception):
    """A request the real API would refuse; carries the Google error to send."""

    def __init__(self, status: int, google_status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.google_status = google_status
        self.message = message


def _invalid(message: str) -> _Reject:
    return _Reject(400, "INVALID_ARGUMENT", message)


def google_error_body(
    status: int, google_status: str, message: str, retry_after_s: float | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if retry_after_s is not None:
        delay = f"{retry_after_s:g}s"
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    return {"error": error}


# --- request parsing / validation ----------------------------------------------------------


def _camel(name: str) -> str:
    """Proto-JSON accepts snake_case too; compare everything in camelCase."""
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _fields(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """Canonicalise keys to camelCase; unknown names are a 400, as in the real API."""
    if not isinstance(obj, dict):
        raise _invalid(
            f"Invalid value at '{where}', expected an object."
            if where
            else "Invalid JSON payload received. Expected an object."
        )
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            at = f" at '{where}'" if where else ""
            raise _invalid(f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.')
        out[name] = value
    return out


@dataclass
class ParsedRequest:
    prompt: str
    images: list[bytes]
    aspect_ratio: str | None
    image_size: str | None
    seed: int | None
    modalities: list[str] | None
    include_thoughts: bool = False


def _decode_b64(data: Any, where: str) -> bytes:
    """Proto-JSON bytes: standard or URL-safe base64; anything else (a data: URL) is a 400."""
    if isinstance(data, str):
        try:
            if re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", data):
                return base64.b64decode(data, validate=True)
            if re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", data):
                return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            pass
    shown = str(data)[:40]
    raise _invalid(f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for \"{shown}\"")


def _parse_blob(blob: Any, where: str) -> bytes | None:
    """Decode an inline image; its declared mime type must match its bytes (open-webui#25127)."""
    fields = _fields(blob, _BLOB, where)
    mime = fields.get("mimeType")
    if not isinstance(mime, str) or not mime:
        raise _invalid(f"* GenerateContentRequest.{where}.mime_type: mime_type is not specified")
    data = _decode_b64(fields.get("data", ""), f"{where}.data")
    if not mime.startswith("image/"):
        return None
    actual = detect_mime(data)
    if actual is None:
        raise _invalid(
            "Unable to process input image. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting"
        )
    if actual != mime:
        raise _invalid(
            f"Unable to process input image: the declared mime type {mime} does not match the image data ({actual})."
        )
    return data


def _parse_part(part: Any, where: str, texts: list[str], images: list[bytes]) -> None:
    fields = _fields(part, _PART, where)
    data_fields = [name for name in fields if name in _PART_DATA]
    if len(data_fields) != 1:
        raise _invalid(
            f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one initialized field"
        )
    if "text" in fields:
        if not isinstance(fields["text"], str) or not fields["text"]:
            raise _invalid(
                "Unable to submit request because it has an empty text parameter. "
                "Add a value to the parameter and try again."
            )
        texts.append(fields["text"])
    elif "inlineData" in fields:
        image = _parse_blob(fields["inlineData"], f"{where}.inline_data")
        if image is not None:
            images.append(image)


def _parse_contents(contents: Any) -> tuple[str, list[bytes]]:
    if not isinstance(contents, list) or not contents:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified")
    texts: list[str] = []
    images: list[bytes] = []
    for i, content in enumerate(contents):
        fields = _fields(content, _CONTENT, f"contents[{i}]")
        parts = fields.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        role = fields.get("role", "user")
        if role not in ("user", "model"):
            raise _invalid(f"Please use a valid role: user, model. (got {role!r})")
        # Earlier model turns are validated but are not part of "the prompt".
        sink_texts, sink_images = (texts, images) if role == "user" else ([], [])
        for j, part in enumerate(parts):
            _parse_part(part, f"contents[{i}].parts[{j}]", sink_texts, sink_images)
    return "\n".join(texts), images


def _parse_seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.fullmatch(r"-?\d+", str(value)):
        raise _invalid(f"Invalid value at 'generation_config.seed' (TYPE_INT32), {value!r}")
    return int(value)


def _parse_modalities(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid("Invalid value at 'generation_config.response_modalities', expected a list.")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or item.upper() not in _MODALITIES:
            raise _invalid(
                f"Invalid value at 'generation_config.response_modalities[{i}]' "
                f"(type.googleapis.com/google.ai.generativelanguage.v1beta."
                f"GenerationConfig.Modality), {item!r}"
            )
        out.append(item.upper())
    return out


def _parse_image_config(value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    fields = _fields(value, _IMAGE_CONFIG, "generation_config.image_config")
    ratio, size = fields.get("aspectRatio"), fields.get("imageSize")
    if ratio is not None and ratio not in ASPECT_RATIOS:
        raise _invalid(
            f"* GenerateContentRequest.generation_config.image_config.aspect_ratio: "
            f"Unsupported aspect ratio {ratio!r}. Supported: {', '.join(ASPECT_RATIOS)}."
        )
    if size is not None and size not in IMAGE_SIZES:  # "1k" is rejected: uppercase K only
        raise _invalid(
            f"* GenerateContentRequest.generation_config.image_config.image_size: "
            f"Unsupported image size {size!r}. Supported: 1K, 2K, 4K."
        )
    return ratio, size


def _parse_include_thoughts(value: Any) -> bool:
    if value is None:
        return False
    fields = _fields(value, _THINKING_CONFIG, "generation_config.thinking_config")
    include = fields.get("includeThoughts", False)
    if not isinstance(include, bool):
        raise _invalid(
            f"Invalid value at 'generation_config.thinking_config.include_thoughts' (TYPE_BOOL), {include!r}"
        )
    return include


def parse_request(body: Any) -> ParsedRequest:
    """Validate a generateContent body the way the real endpoint does; raise _Reject."""
    top = _fields(body, _TOP_LEVEL, "")
    if "contents" not in top:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified")
    prompt, images = _parse_contents(top["contents"])
    config = _fields(top.get("generationConfig", {}), _GENERATION_CONFIG, "generation_config")
    ratio, size = _parse_image_config(config.get("imageConfig"))
    return ParsedRequest(
        prompt=prompt,
        images=images,
        aspect_ratio=ratio,
        image_size=size,
        seed=_parse_seed(config.get("seed")),
        modalities=_parse_modalities(config.get("responseModalities")),
        include_thoughts=_parse_include_thoughts(config.get("thinkingConfig")),
    )


def nearest_ratio(width: int, height: int) -> str:
    """The supported ratio closest (in log space) to an input image's shape."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ASPECT_RATIOS, key=distance)


# --- the fake ------------------------------------------------------------------------------


class FakeGemini(BaseFake):
    """Fake Gemini generateContent upstream. `with FakeGemini() as fake: fake.base_url`."""

    def __init__(
        self,
        *,
        api_key: str = "test-gemini-key",
        output_mime: str = "image/png",
        images_per_response: int = 1,
        thought_images: int = 1,
        known_models: set[str] | None = None,
        stream_method: str = "sse",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.output_mime = output_mime
        self.images_per_response = images_per_response
        self.thought_images = thought_images
        self.known_models = known_models  # None: every model name exists
        # How streamGenerateContent is answered: "sse" as Google does with alt=sse; "missing", a
        # Gemini-compatible server that has only generateContent (404, as for any unknown method);
        # "json", a proxy that dropped the query, so Google's unstreamed form: a JSON array of the chunks.
        self.stream_method = stream_method
        self._settings = dict(
            stream_method=stream_method,
            api_key=api_key,
            output_mime=output_mime,
            images_per_response=images_per_response,
            thought_images=thought_images,
            known_models=known_models,
        )

    def reset(self) -> None:
        """Clear recordings/queue/counters and restore the constructor settings."""
        super().reset()
        for name, value in self._settings.items():
            setattr(self, name, value)

    @property
    def base_url(self) -> str:
        """What to give the client as base URL (it appends /v1beta/models/...)."""
        return self.url

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1beta/models/{rest:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        recorded = await self.record(request)
        async with self.track():
            return await self._respond(request, recorded)

    async def _respond(self, request: Request, recorded: RecordedRequest) -> Response:
        model, _, method = request.path_params["rest"].rpartition(":")
        recorded.model = model or None
        ok, recorded.json = parse_json(recorded.body)
        try:
            self._check_auth(request)
            if method not in METHODS or not model:
                raise _Reject(404, "NOT_FOUND", f"Method not found: {request.url.path}")
            if self.known_models is not None and model not in self.known_models:
                raise _Reject(
                    404,
                    "NOT_FOUND",
                    f"models/{model} is not found for API version v1beta, or is not supported for generateContent.",
                )
            if not ok:
                raise _invalid("Invalid JSON payload received. Unexpected token.")
            parsed = parse_request(recorded.json)
        except _Reject as reject:
            return json_response(reject.status, google_error_body(reject.status, reject.google_status, reject.message))
        if method == "streamGenerateContent" and self.stream_method == "missing":
            return json_response(404, google_error_body(404, "NOT_FOUND", f"Method not found: {request.url.path}"))
        if method == "streamGenerateContent" and self.stream_method == "json":
            behaviour = self.next_behaviour()
            if behaviour is not None:
                return await self._apply(behaviour, request, model, parsed)
            return json_response(200, await run_in_threadpool(self.stream_chunks, parsed, model, Streamed()))
        if method == "streamGenerateContent":
            return await self._apply_stream(self.next_behaviour(), request, model, parsed)
        return await self._apply(self.next_behaviour(), request, model, parsed)

    def _check_auth(self, request: Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if key != self.api_key:
            raise _Reject(403, "PERMISSION_DENIED", "API key not valid. Please pass a valid API key.")

    async def _apply(self, behaviour: Any, request: Request, model: str, parsed: ParsedRequest) -> Response:
        """Turn one scripted behaviour (None = success) into the HTTP answer."""
        if isinstance(behaviour, (Hang, Delay)):
            await self.sleep(request, behaviour.seconds)
            return await self._success(model, parsed)
        if isinstance(behaviour, GeminiError):
            body = google_error_body(
                behaviour.status, behaviour.google_status, behaviour.message, behaviour.retry_after_s
            )
            return json_response(behaviour.status, body)
        if isinstance(behaviour, PromptBlocked):
            return json_response(200, self._prompt_blocked(model, behaviour))
        if isinstance(behaviour, FinishBlocked):
            return json_response(200, self._finish_blocked(model, behaviour))
        if isinstance(behaviour, TextOnly):
            return json_response(200, self._envelope(model, [{"text": behaviour.text}], "STOP"))
        if isinstance(behaviour, MalformedJSON):
            return Response(behaviour.body or '{"candidates": [', media_type="application/json")
        if isinstance(behaviour, RawResponse):
            return raw_response(behaviour)
        if behaviour is None:
            return await self._success(model, parsed)
        raise TypeError(f"FakeGemini cannot apply behaviour {behaviour!r}")

    async def _apply_stream(self, behaviour: Any, request: Request, model: str, parsed: ParsedRequest) -> Response:
        """One scripted behaviour as a streamGenerateContent answer: errors (and raw answers) as
        generateContent sends them; a 200 answer as a stream of its one chunk."""
        if isinstance(behaviour, (Hang, Delay)):
            await self.sleep(request, behaviour.seconds)
            behaviour = None
        if behaviour is None:
            behaviour = Streamed()
        if isinstance(behaviour, Streamed):
            chunks = behaviour.chunks
            if chunks is None:
                chunks = tuple(await run_in_threadpool(self.stream_chunks, parsed, model, behaviour))
            return EventStream(
                self, request, chunks, delay=behaviour.delay, drop_after=behaviour.drop_after, gate=behaviour.gate
            )
        if isinstance(behaviour, PromptBlocked):
            return EventStream(self, request, (self._prompt_blocked(model, behaviour),))
        if isinstance(behaviour, FinishBlocked):
            return EventStream(self, request, (self._finish_blocked(model, behaviour),))
        if isinstance(behaviour, TextOnly):
            return EventStream(self, request, (self._envelope(model, [{"text": behaviour.text}], "STOP"),))
        if isinstance(behaviour, MalformedJSON):
            body = (behaviour.body or '{"candidates": [').encode()
            return Response(b"data: " + body + b"\r\n\r\n", media_type="text/event-stream")
        return await self._apply(behaviour, request, model, parsed)  # GeminiError, RawResponse

    def stream_chunks(self, parsed: ParsedRequest, model: str, streamed: Streamed) -> list[dict[str, Any]]:
        """The usual streamed answer: a thought text, the thought images (only when the request
        asks for thoughts, and not from FLASH_MODELS, which do not think), the answer's text and
        image(s), and a last chunk with finishReason; usage on each, the full count on the last."""
        answer = [part for part in self._success_parts(parsed, model) if not part.get("thought")]
        thoughts: list[dict[str, Any]] = []
        if parsed.include_thoughts and model not in FLASH_MODELS:
            thoughts.append(text_chunk("**Composing the scene**", thought=True))
            thoughts += [thought_chunk(solid_png(8, 8, thought_color(i))) for i in range(streamed.thought_images)]
        chunks = [*thoughts, _chunk(answer)] if not streamed.thoughts_last else [_chunk(answer), *thoughts]
        for count, chunk in enumerate(chunks, start=1):  # usage grows as the answer does
            chunk["usageMetadata"] = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": count}
        chunks.append(finish_chunk("STOP", success_usage(len(parsed.images))))
        for chunk in chunks:
            chunk["modelVersion"] = model
        return chunks

    def _envelope(
        self, model: str, parts: list[dict[str, Any]], finish: str, finish_message: str | None = None
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
        if finish_message is not None:
            candidate["finishMessage"] = finish_message
        return {
            "candidates": [candidate],
            "usageMetadata": dict(USAGE),
            "modelVersion": model,
            "responseId": secrets.token_urlsafe(12),
        }

    def _prompt_blocked(self, model: str, blocked: PromptBlocked) -> dict[str, Any]:
        feedback: dict[str, Any] = {"blockReason": blocked.reason}
        if blocked.message is not None:
            feedback["blockReasonMessage"] = blocked.message
        return {
            "promptFeedback": feedback,
            "usageMetadata": {"promptTokenCount": 17, "totalTokenCount": 17},
            "modelVersion": model,
            "responseId": secrets.token_urlsafe(12),
        }

    def _finish_blocked(self, model: str, blocked: FinishBlocked) -> dict[str, Any]:
        parts = [{"text": "I'm unable to create that image."}]
        return self._envelope(model, parts, blocked.reason, blocked.message)

    async def _success(self, model: str, parsed: ParsedRequest) -> Response:
        parts = await run_in_threadpool(self._success_parts, parsed, model)
        body = self._envelope(model, parts, "STOP")
        body["usageMetadata"] = success_usage(len(parsed.images))
        return json_response(200, body)

    def output_size(self, parsed: ParsedRequest, model: str | None = None) -> tuple[int, int]:
        """Pixel size from the Pro table (the Flash table for FLASH_MODELS, whatever imageSize
        says); without aspectRatio, follow the first input image."""
        ratio = parsed.aspect_ratio
        if ratio is None:
            ratio = nearest_ratio(*image_size(parsed.images[0])) if parsed.images else "1:1"
        if model in FLASH_MODELS:
            return FLASH_SIZES[ratio]
        return PRO_SIZES[(ratio, parsed.image_size or "1K")]

    def mime_for(self, parsed: ParsedRequest) -> str:
        """The output images' type: `output_mime` (the Gemini API has no output format option;
        FakeVertex answers imageOutputOptions.mimeType here)."""
        return self.output_mime

    def _success_parts(self, parsed: ParsedRequest, model: str | None = None) -> list[dict[str, Any]]:
        """Thought image(s), then text, then the final image(s), as Gemini 3 Pro Image does
        (FLASH_MODELS send no thought images)."""
        wants_text = parsed.modalities is None or "TEXT" in parsed.modalities
        wants_image = parsed.modalities is None or "IMAGE" in parsed.modalities
        parts: list[dict[str, Any]] = []
        if wants_image and model not in FLASH_MODELS:
            thought = _b64(solid_png(8, 8, THOUGHT_COLOR))
            parts += [{"inlineData": {"mimeType": "image/png", "data": thought}, "thought": True}] * self.thought_images
        if wants_text or not wants_image:
            parts.append({"text": f"Here is your image: {parsed.prompt}"})
        if wants_image:
            width, height = self.output_size(parsed, model)
            seed_text = parsed.prompt + ("" if parsed.seed is None else str(parsed.seed))
            mime = self.mime_for(parsed)
            for i in range(self.images_per_response):
                color = color_for(seed_text if i == 0 else f"{seed_text}#{i}")
                data = _b64(solid_image(mime, width, height, color))
                parts.append({"inlineData": {"mimeType": mime, "data": data}, "thoughtSignature": "sig"})
        return parts


# --- streamed answers ------------------------------------------------------------------------

METHODS = frozenset({"generateContent", "streamGenerateContent"})


def thought_color(index: int) -> tuple[int, int, int]:
    """The colour of the stream's `index`th thought image (the first is THOUGHT_COLOR)."""
    return (255, (40 * index) % 256, 255)


def _chunk(parts: list[dict[str, Any]], **candidate: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0, **candidate}]}


def thought_chunk(png: bytes, mime: str = "image/png") -> dict[str, Any]:
    """A chunk with one interim image (`thought: true`)."""
    return _chunk([{"inlineData": {"mimeType": mime, "data": _b64(png)}, "thought": True}])


def image_chunk(data: bytes, mime: str = "image/png", **candidate: Any) -> dict[str, Any]:
    """A chunk with one answer image (with its thoughtSignature, as Gemini 3 sends it)."""
    return _chunk([{"inlineData": {"mimeType": mime, "data": _b64(data)}, "thoughtSignature": "sig"}], **candidate)


def text_chunk(text: str, *, thought: bool = False) -> dict[str, Any]:
    return _chunk([{"text": text, "thought": True} if thought else {"text": text}])


def finish_chunk(reason: str = "STOP", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The last chunk: finishReason and the whole answer's usage."""
    chunk = _chunk([{"text": ""}], finishReason=reason)
    chunk["usageMetadata"] = usage if usage is not None else success_usage(0)
    return chunk


class EventStream(Response):
    """`text/event-stream`, one `data: <json>` line and a blank line per chunk (CRLF, as Google's
    front end sends HTTP), written as the chunks are due; the client going away stops it."""

    media_type = "text/event-stream"

    def __init__(
        self,
        fake: BaseFake,
        request: Request,
        chunks: tuple[dict[str, Any], ...],
        *,
        delay: float = 0.0,
        drop_after: int | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        super().__init__(media_type=self.media_type)
        self.fake, self.request, self.chunks = fake, request, chunks
        self.delay, self.drop_after, self.gate = delay, drop_after, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sse = self.request.query_params.get("alt") == "sse"
        content_type = b"text/event-stream" if sse else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        async with self.fake.track():
            for index, chunk in enumerate(self.chunks):
                if index == self.drop_after:
                    return  # uvicorn closes the connection of a response left unfinished
                if index and self.delay and not await self.fake.sleep(self.request, self.delay):
                    return
                if self.gate is not None and _holds_answer(chunk):
                    while not self.gate.is_set():  # the test thread sets it
                        if not await self.fake.sleep(self.request, 0.01):
                            return
                data = json.dumps(chunk, separators=(",", ":")).encode()
                # Without alt=sse the chunks are the items of one JSON array, as google-genai's
                # line-by-line reader of that form expects.
                event = b"data: " + data + b"\r\n\r\n" if sse else (b"," if index else b"[") + data + b"\r\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"" if sse else b"]"})


def _holds_answer(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries a final (non-thought) image."""
    for candidate in chunk.get("candidates") or []:
        for part in (candidate.get("content") or {}).get("parts") or []:
            if (part.get("inlineData") or part.get("inline_data")) and not part.get("thought"):
                return True
    return False


def success_usage(input_images: int) -> dict[str, Any]:
    """usageMetadata as the real API sends it with an image: totals and the split by modality."""
    image_tokens = INPUT_IMAGE_TOKENS * input_images
    prompt_details = [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]
    if image_tokens:
        prompt_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    return {
        "promptTokenCount": PROMPT_TOKENS + image_tokens,
        "candidatesTokenCount": IMAGE_OUTPUT_TOKENS,
        "totalTokenCount": PROMPT_TOKENS + image_tokens + IMAGE_OUTPUT_TOKENS,
        "promptTokensDetails": prompt_details,
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": IMAGE_OUTPUT_TOKENS}],
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
