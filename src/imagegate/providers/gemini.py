"""Google Gemini API, native `generateContent`: `{base}/v1beta/models/{model}:generateContent`.

Prompt and input images go as parts of one user turn; shape and scale as
`generationConfig.imageConfig.aspectRatio` / `imageSize`. Images come back as inline data.
Safety blocks arrive as HTTP 200 and are turned into errors here. Gemini 3 Pro Image sends
interim "thought" images before its answer: those parts carry `thought: true` and are skipped.

When the gateway streams partial images (`request.on_partial`), the call is
`:streamGenerateContent?alt=sse` with `includeThoughts`, and each thought image is reported as it
arrives (`stream_content`). The streamed chunks are then put together into one answer, read by
`parse_response` like any other, so a streamed and a plain call follow one set of rules.
Gemini-compatible servers and proxies do not all stream: a streamed method that is not there
(404, 405, 501) is followed by the plain call, and a streamed call answered as plain JSON (one
response, or Google's array of chunks, as without `alt=sse`) is read as it is. Either way the
image still comes, only without partial images (which a stream never promises).

An answer is ~2 MB of JSON of which all but a few hundred bytes is one image's base64. So the
body is not parsed whole: `lift_spans` cuts each long `"data"` string out (base64 has no quote or
backslash, so the string ends at the next quote), the small rest is parsed, and each inlineData
gets a view of its span back. Nothing is decoded but the image's head (format, size) and a
validation pass; a b64_json answer sends the upstream's own bytes. Whenever the cut-down body
does not account for every span exactly where an image belongs (escaped strings, duplicate keys,
a `"data"` key elsewhere, garbage), the whole body is parsed the ordinary way instead.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .. import jsonio
from ..errors import ContentPolicyViolation, ImagegateError, NoImageGenerated, UpstreamBadResponse
from ..imaging import MIME_BY_FORMAT, decode_b64_image
from ..params import WirePlan
from ..plugins import ProviderSpec
from .base import (
    HttpProvider,
    InputImage,
    PartialListener,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    TokenSplit,
    merge_passthrough,
    token_count,
)
from .transport import (
    ErrorHook,
    UpstreamResponse,
    error_for_status,
    json_or_none,
    retry_after_seconds,
    seconds_value,
    send_checked,
    stream_events,
    upstream_text,
)

log = logging.getLogger("imagegate")

# Finish and block reasons that mean "the safety system said no" rather than "it failed".
SAFETY_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
        "JAILBREAK",
    }
)
HARM_CATEGORIES = (
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)
# safety_tolerance (fal's 1 strictest .. 6 most permissive) onto Gemini's thresholds.
TOLERANCE_THRESHOLDS = {
    "1": "BLOCK_LOW_AND_ABOVE",
    "2": "BLOCK_LOW_AND_ABOVE",
    "3": "BLOCK_MEDIUM_AND_ABOVE",
    "4": "BLOCK_MEDIUM_AND_ABOVE",
    "5": "BLOCK_ONLY_HIGH",
    "6": "BLOCK_ONLY_HIGH",
}
MASK_NOTE = (
    "The last image is a mask for the first image: change only the areas where the mask is "
    "transparent and keep everything else exactly as it is."
)


def _inline(image: InputImage) -> dict[str, Any]:
    return {"inline_data": {"mime_type": image.mime_type, "data": base64.b64encode(image.data).decode("ascii")}}


# Where Gemini takes the layout and the seed when a binding does not say (generateContent's
# GenerationConfig: imageConfig.aspectRatio / imageSize, seed).
ASPECT_RATIO_PATH = "generationConfig.imageConfig.aspectRatio"
IMAGE_SIZE_PATH = "generationConfig.imageConfig.imageSize"
SEED_PATH = "generationConfig.seed"


def proto_field(key: str) -> str:
    """Gemini's REST takes proto-JSON, where `image_size` and `imageSize` name one field."""
    return key.replace("_", "").lower()


def build_body(request: ProviderRequest) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    parts += [_inline(image) for image in request.images]
    if request.mask is not None:
        parts += [{"text": MASK_NOTE}, _inline(request.mask)]
    body: dict[str, Any] = {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    }
    plan = request.plan
    plan.place(body, "aspect_ratio", request.layout.aspect_ratio, undeclared=ASPECT_RATIO_PATH)
    # Models with one fixed tier (gemini-2.5-flash-image) take no imageSize: the plan says so.
    plan.place(body, "resolution", request.layout.resolution, undeclared=IMAGE_SIZE_PATH)
    plan.place(body, "seed", request.seed, undeclared=SEED_PATH)
    _apply_options(body, request.options, plan)
    merge_passthrough(body, request.extra, reserved=plan.reserved(), fold=proto_field)
    return body


def _apply_options(body: dict[str, Any], options: dict[str, Any], plan: WirePlan) -> None:
    """Gemini's own options, each converted to what generateContent takes and placed where the
    plan says (`tools`, `safetySettings` unless the binding moves them)."""
    if options.get("enable_web_search"):
        plan.place(body, "enable_web_search", [{"google_search": {}}], undeclared="tools")
    threshold, source = None, None
    if "safety_tolerance" in options:
        threshold, source = TOLERANCE_THRESHOLDS[str(options["safety_tolerance"])], "safety_tolerance"
    if "safety_filter_level" in options:  # the more specific of the two wins
        threshold, source = str(options["safety_filter_level"]).upper(), "safety_filter_level"
    if threshold is not None and source is not None:
        settings = [{"category": c, "threshold": threshold} for c in HARM_CATEGORIES]
        plan.place(body, source, settings, undeclared="safetySettings")


def _google_error(provider: str, status: int, data: Any, retry_after: float | None) -> ImagegateError:
    message = f"HTTP {status}"
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        message = " ".join(upstream_text(err[k]) for k in ("status", "message") if err.get(k)) or message
        details = err.get("details")
        for detail in details if isinstance(details, list) else []:
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if retry_after is None and isinstance(delay, str) and delay.strip().endswith("s"):
                retry_after = seconds_value(delay)  # "1e999s" or "nans" is no hint at all
    return error_for_status(provider, status, message, retry_after=retry_after)


def _reason(value: Any) -> str | None:
    """A finishReason / blockReason: an enum name, or nothing (odd types are not a 500)."""
    return value if isinstance(value, str) and value else None


def _bad_response(what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"gemini sent {what}.")


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad_response(f"a malformed {what}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_response(f"a malformed {what}")
    return value


def _image_part(inline: Any) -> ProviderImage:
    """Check an inlineData blob from its head; trust the bytes, not the declared mime type.
    The base64 text (or the view of it in the body) is kept as it is, so a b64_json answer can
    reuse it without decoding; all of it is validated, so none of it can break the answer's JSON."""
    blob = _dict(inline, "inlineData")
    data = blob.get("data")
    if not isinstance(data, (str, memoryview)):
        raise _bad_response("an inlineData part without base64 data")
    try:
        image, fmt = decode_b64_image(data)
        image.validate()
    except binascii.Error as exc:
        raise _bad_response("inline data that is not valid base64") from exc
    except ValueError as exc:
        raise _bad_response(f"inline data that is {exc}") from exc
    return ProviderImage(image, MIME_BY_FORMAT[fmt])


# Strings shorter than this are left in the body: cutting them out saves nothing.
SPAN_MIN_CHARS = 1024
_DATA_KEY = b'"data"'
_WHITESPACE = b" \t\r\n"


def _skip_whitespace(body: bytes, index: int) -> int:
    while index < len(body) and body[index] in _WHITESPACE:
        index += 1
    return index


def lift_spans(body: bytes) -> tuple[bytes, dict[str, memoryview]]:
    """The body with the content of every long `"data": "..."` string replaced by a placeholder
    (unguessable: a fresh nonce per body), and the views of what was cut, by placeholder. Only
    strings without a backslash are cut: they end at the next quote."""
    nonce = secrets.token_hex(8)
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    spans: dict[str, memoryview] = {}
    copied = search = 0
    while (found := body.find(_DATA_KEY, search)) != -1:
        search = found + len(_DATA_KEY)
        colon = _skip_whitespace(body, search)
        if colon >= len(body) or body[colon] != ord(":"):
            continue
        quote = _skip_whitespace(body, colon + 1)
        if quote >= len(body) or body[quote] != ord('"'):
            continue
        start = quote + 1
        end = body.find(b'"', start)
        if end == -1:
            break
        search = end + 1
        if end - start < SPAN_MIN_CHARS or body.find(b"\\", start, end) != -1:
            continue
        placeholder = f"imagegate-span-{nonce}-{len(spans)}"
        pieces += [view[copied:start], placeholder.encode()]
        spans[placeholder] = view[start:end]
        copied = end
    if not spans:
        return body, spans
    pieces.append(view[copied:])
    return b"".join(pieces), spans


def _put_back(data: Any, spans: dict[str, memoryview]) -> bool:
    """Give each inlineData whose data is a placeholder its span back; True when every span
    was found there, exactly once (anything else: the cut went wrong, parse the whole body)."""
    left = dict(spans)
    candidates = data.get("candidates") if isinstance(data, dict) else None
    for candidate in candidates if isinstance(candidates, list) else []:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            for key in ("inlineData", "inline_data"):
                blob = part.get(key) if isinstance(part, dict) else None
                if isinstance(blob, dict) and isinstance(blob.get("data"), str) and blob["data"] in left:
                    blob["data"] = left.pop(blob["data"])
    return not left


def parse_body(provider: str, body: bytes) -> Any:
    """The JSON of a 200 answer, with each image's base64 as a view of `body` where it can be."""
    reduced, spans = lift_spans(body)
    if spans:
        try:
            data = jsonio.loads(reduced)
        except (ValueError, RecursionError):
            data = None
        if data is not None and _put_back(data, spans):
            return data
    return _parse_whole(provider, body)


def _parse_whole(provider: str, body: bytes) -> Any:
    try:
        return jsonio.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise UpstreamBadResponse(f"{provider} sent a response that is not valid JSON.") from exc


def parse_response(data: Any, *, keep_all_images: bool) -> ProviderResult:
    if not isinstance(data, dict):
        raise _bad_response("an unexpected response")
    candidates = _list(data.get("candidates"), "candidates list")
    feedback = _dict(data.get("promptFeedback"), "promptFeedback")
    if not candidates:
        reason = _reason(feedback.get("blockReason"))
        if reason:
            detail = upstream_text(feedback.get("blockReasonMessage") or "")
            raise ContentPolicyViolation(
                f"The prompt was blocked by the upstream safety system ({reason}). {detail}".strip(), param="prompt"
            )
        raise NoImageGenerated("gemini returned no candidates.")
    candidate = _dict(candidates[0], "candidate")
    parts = _list(_dict(candidate.get("content"), "content").get("parts"), "parts list")
    images: list[ProviderImage] = []
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict) or part.get("thought"):
            continue  # interim "thinking" images and thought text are not the answer
        inline = part.get("inlineData") or part.get("inline_data")
        if inline:
            images.append(_image_part(inline))
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
    text = "\n".join(t for t in texts if t.strip()) or None
    reason = _reason(candidate.get("finishReason"))
    if not images:
        message = upstream_text(candidate.get("finishMessage") or text or "")
        if reason in SAFETY_REASONS:
            raise ContentPolicyViolation(
                f"The upstream safety system stopped the image ({reason}). {message}".strip(), param="prompt"
            )
        raise NoImageGenerated(f"gemini returned no image (finishReason {reason}). {message}".strip())
    usage = _dict(data.get("usageMetadata"), "usageMetadata")
    kept = images if keep_all_images else images[:1]
    return ProviderResult(
        images=[ProviderImage(image.blob, image.mime_type, text) for image in kept],
        text=text,
        input_tokens=token_count(usage.get("promptTokenCount")),
        output_tokens=token_count(usage.get("candidatesTokenCount")),
        input_details=modality_split(usage.get("promptTokensDetails")),
        output_details=modality_split(usage.get("candidatesTokensDetails")),
    )


# --- streamed answers (partial images) -------------------------------------------------------

# What a server without the streamed method answers it: no such path, method or feature. Nothing
# was generated, so the plain call is made instead (an unknown model is refused by that one too).
STREAM_NOT_OFFERED = frozenset({404, 405, 501})


class _StreamNotOffered(UpstreamBadResponse):
    """The streamed method is not there (STREAM_NOT_OFFERED): `stream_content` makes the plain call."""


def with_thoughts(body: dict[str, Any]) -> dict[str, Any]:
    """`body` asking for the model's thoughts, where its interim images are: GenerationConfig's
    `thinkingConfig.includeThoughts` (python-genai types.ThinkingConfig.include_thoughts, sent as
    generationConfig.thinkingConfig by models._GenerationConfig_to_mldev and _to_vertex alike;
    "thoughts are returned only if the model supports thought", so a model that does not think,
    Nano Banana, takes it and sends none). A thinkingConfig passed through keeps its other fields."""
    config = body["generationConfig"]
    key = next((k for k in config if proto_field(k) == "thinkingconfig"), "thinkingConfig")
    thinking = config.setdefault(key, {})
    if isinstance(thinking, dict):  # anything else passed through is Google's to refuse, as without streaming
        for name in [k for k in thinking if proto_field(k) == "includethoughts"]:
            del thinking[name]
        thinking["includeThoughts"] = True
    return body


class StreamedAnswer:
    """The chunks of one streamed answer (each a GenerateContentResponse), put together.

    Thought images are reported at once, in arrival order, wherever they come (before the answer
    or after it: a thought image is never the result); one that is not a valid image is skipped
    and logged, since the answer does not need it. Thought text is dropped. Every other part of
    the first candidate is kept in order, text that continues from one chunk into the next as one
    text; the candidate's other fields (finishReason, finishMessage), promptFeedback and
    usageMetadata are the last chunk's that carries each (usage grows chunk by chunk)."""

    def __init__(self, on_partial: PartialListener) -> None:
        self.on_partial = on_partial
        self._parts: list[Any] = []
        self._candidate: dict[str, Any] | None = None  # None: no chunk had a candidate
        self._top: dict[str, Any] = {}

    def add(self, chunk: Any) -> None:
        data = _dict(chunk, "stream chunk")
        self._top.update({k: data[k] for k in ("promptFeedback", "usageMetadata") if data.get(k) is not None})
        candidates = _list(data.get("candidates"), "candidates list")
        if not candidates:
            return
        candidate = _dict(candidates[0], "candidate")
        self._candidate = self._candidate or {}
        self._candidate.update({k: v for k, v in candidate.items() if k != "content" and v is not None})
        for index, part in enumerate(_list(_dict(candidate.get("content"), "content").get("parts"), "parts list")):
            self._add_part(part, continues=index == 0)

    def _add_part(self, part: Any, *, continues: bool) -> None:
        if isinstance(part, dict) and part.get("thought"):
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                self._partial(inline)
            return
        last: Any = self._parts[-1] if self._parts else None
        if continues and _plain_text(part) and _plain_text(last):
            self._parts[-1] = {**last, "text": last["text"] + part["text"]}
        else:
            self._parts.append(part)

    def _partial(self, inline: Any) -> None:
        try:
            image = _image_part(inline)
        except UpstreamBadResponse as exc:
            log.warning("gemini: an interim (thought) image was skipped: %s", exc.message)
            return
        self.on_partial(image)

    def response(self) -> dict[str, Any]:
        """The answer as one GenerateContentResponse, for `parse_response`."""
        candidates = []
        if self._candidate is not None:
            candidates.append({**self._candidate, "content": {"role": "model", "parts": self._parts}})
        return {"candidates": candidates, **self._top}


def _plain_text(part: Any) -> bool:
    """A part that is only text (no image, no thought signature to keep)."""
    return isinstance(part, dict) and isinstance(part.get("text"), str) and set(part) == {"text"}


async def stream_content(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    request: ProviderRequest,
    *,
    provider: str,
    timeout: float,
    max_bytes: int,
    headers: dict[str, str],
    error: ErrorHook,
    plain: Callable[[], Awaitable[ProviderResult]],
) -> ProviderResult:
    """One `streamGenerateContent?alt=sse` call (Gemini API and Vertex AI alike): `body` asks
    for thoughts, each thought image goes to `request.on_partial` as it arrives, and the result
    is the chunks' answer read by `parse_response`. Each chunk is parsed with `parse_body`, so an
    image's megabytes of base64 stay a view of the event they came in. Where the streamed method
    is not offered, the answer is `plain()`'s (the same request as generateContent)."""
    assert request.on_partial is not None, "a streamed call is made for a listener"
    answer = StreamedAnswer(request.on_partial)

    def error_or_not_offered(response: UpstreamResponse) -> ImagegateError:
        if response.status_code in STREAM_NOT_OFFERED:
            return _StreamNotOffered(f"{provider} has no streamed method (HTTP {response.status_code}).")
        return error(response)

    events = stream_events(
        client,
        "POST",
        url,
        provider=provider,
        timeout=timeout,
        max_bytes=max_bytes,
        error=error_or_not_offered,
        json_whole=True,
        json=with_thoughts(body),
        headers=headers,
    )
    chunks = 0
    try:
        async with contextlib.aclosing(events):
            async for payload in events:
                if payload and not payload.isspace():
                    data = parse_body(provider, payload)
                    # An unstreamed answer: one response, or the array of chunks Google sends without alt=sse.
                    for chunk in data if isinstance(data, list) else [data]:
                        answer.add(chunk)
                        chunks += 1
                    del data
                # Let go of it now, not when the next event (megabytes more) is in: what the answer
                # or a listener still needs of it, they hold.
                del payload
    except _StreamNotOffered as exc:
        log.info("%s; making the plain call instead", exc.message)
        return await plain()
    if not chunks:  # a 2xx that is not an event stream at all (a proxy's page, JSON without alt=sse)
        raise UpstreamBadResponse(f"{provider} sent a streamed answer without any events.")
    return parse_response(answer.response(), keep_all_images=request.options.get("limit_generations") is False)


def stream_error(provider: str, response: UpstreamResponse) -> ImagegateError:
    """A non-2xx answer to a streamed call: Google's error body, which a stream without
    `alt=sse` wraps in a JSON array (`[{"error": ...}]`), else the status."""
    data = json_or_none(response.body)
    if isinstance(data, list) and data:
        data = data[0]
    return _google_error(provider, response.status_code, data, retry_after_seconds(response.headers))


def modality_split(details: Any) -> TokenSplit | None:
    """Gemini's `[{modality: TEXT|IMAGE|..., tokenCount}]` as text and image tokens (audio and
    video prompts do not reach an image model); None when the upstream gave no list."""
    if not isinstance(details, list):
        return None
    counts = {"TEXT": 0, "IMAGE": 0}
    for entry in details:
        if isinstance(entry, dict) and entry.get("modality") in counts:
            counts[str(entry["modality"])] += token_count(entry.get("tokenCount"))
    return TokenSplit(text_tokens=counts["TEXT"], image_tokens=counts["IMAGE"])


class GeminiProvider(HttpProvider):
    provider_id = "gemini"
    key_env_var = "GEMINI_API_KEY"
    base_url_env_var = "GEMINI_BASE_URL"
    default_base_url = "https://generativelanguage.googleapis.com"

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._generate_content(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._generate_content(request)

    def error(self, response: UpstreamResponse) -> ImagegateError:
        """A non-2xx answer: Google's error body, else the status."""
        return _google_error(
            self.provider_id, response.status_code, json_or_none(response.body), retry_after_seconds(response.headers)
        )

    async def _generate_content(self, request: ProviderRequest) -> ProviderResult:
        if request.on_partial is not None:
            return await self._stream_content(request)
        return await self._plain_content(request)

    async def _plain_content(self, request: ProviderRequest) -> ProviderResult:
        url = f"{self.base_url}/v1beta/models/{request.upstream_model}:generateContent"
        response = await send_checked(
            self.client,
            "POST",
            url,
            provider=self.provider_id,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            json=build_body(request),
            headers={"x-goog-api-key": self.api_key},
            error=self.error,
        )
        keep_all = request.options.get("limit_generations") is False
        return parse_response(parse_body(self.provider_id, response.body), keep_all_images=keep_all)

    async def _stream_content(self, request: ProviderRequest) -> ProviderResult:
        # The streaming method and its SSE form: google-genai models.py (generate_content_stream:
        # '{model}:streamGenerateContent?alt=sse'); the provider wire-format reference, 2.1.
        url = f"{self.base_url}/v1beta/models/{request.upstream_model}:streamGenerateContent?alt=sse"
        return await stream_content(
            self.client,
            url,
            build_body(request),
            request,
            provider=self.provider_id,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            headers={"x-goog-api-key": self.api_key},
            error=lambda response: stream_error(self.provider_id, response),
            plain=lambda: self._plain_content(request),
        )


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py): built-in providers register as outside ones do."""
    register(GeminiProvider.provider_spec())
