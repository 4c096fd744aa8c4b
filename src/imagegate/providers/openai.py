"""Any OpenAI-compatible Images upstream (OpenAI itself, a hosted gateway, another imagegate).

Generations are JSON, edits multipart (`image[]`, `mask`, every other field as a form field).
Which of our normalized values are sent, and under what name, comes from the request's plan
(the catalog binding's).
The gateway asks for `b64_json` where the binding says the upstream takes `response_format`; a `url`
answer is downloaded all the same.

When the gateway streams partial images (`request.on_partial`, for bindings that declare
`partial_images`: the GPT image models), the same call is made with `stream: true` and
`partial_images: N`; the upstream answers with its image event stream, each partial image goes to
`on_partial` as it arrives, and the completed events are the result (see `StreamedImages`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import jsonio, wire
from ..errors import ContentPolicyViolation, ImagegateError, NoImageGenerated, UpstreamBadResponse
from ..imaging import MIME_BY_FORMAT, decode_b64_image, sniff_format
from ..plugins import ProviderSpec
from .base import (
    HttpProvider,
    PartialListener,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    TokenSplit,
    merge_passthrough,
    token_count,
)
from .transport import (
    UpstreamResponse,
    download_image,
    error_for_status,
    json_or_none,
    parse_json,
    retry_after_seconds,
    send_checked,
    stream_events,
    upstream_text,
)

log = logging.getLogger("imagegate")

POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})


def build_fields(request: ProviderRequest) -> dict[str, Any]:
    plan = request.plan
    layout = request.layout
    values: dict[str, Any] = {
        "size": f"{layout.width}x{layout.height}",
        "aspect_ratio": layout.aspect_ratio,
        "resolution": layout.resolution,
        "seed": request.seed,
        "output_format": request.output_format,
        "output_compression": request.output_compression if request.output_format else None,
    }
    fields: dict[str, Any] = {"model": request.upstream_model, "prompt": request.prompt, "n": request.n}
    # Ask for base64 where the upstream takes the field (dall-e, another imagegate); GPT image
    # models always answer base64 and reject it, so their binding declares no `to`.
    for path in plan.paths("response_format"):
        wire.place(fields, path, "b64_json")
    for param, value in values.items():
        plan.place(fields, param, value)  # a value the binding does not mention is not sent
    for param, value in request.options.items():
        plan.place(fields, param, value, undeclared=param)  # emulated options are the gateway's business
    merge_passthrough(fields, request.extra, reserved=plan.reserved(), fold=form_field)
    return fields


def token_split(details: Any) -> TokenSplit | None:
    """OpenAI's `{text_tokens, image_tokens}`, or None when the upstream gave none."""
    if not isinstance(details, dict):
        return None
    return TokenSplit(
        text_tokens=token_count(details.get("text_tokens")), image_tokens=token_count(details.get("image_tokens"))
    )


def form_field(key: str) -> str:
    """Edits go as multipart, where `image[]` and `image` are the same field."""
    return key.removesuffix("[]")


def _form_pairs(key: str, value: Any) -> list[tuple[str, str]]:
    """Flatten like the openai SDK does: dicts to key[sub], lists to key[], bools to true/false,
    None left out."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [pair for sub, v in value.items() for pair in _form_pairs(f"{key}[{sub}]", v)]
    if isinstance(value, list):
        return [pair for v in value for pair in _form_pairs(f"{key}[]", v)]
    if isinstance(value, bool):
        return [(key, "true" if value else "false")]
    return [(key, str(value))]


def _error(provider: str, status: int, data: Any, retry_after: float | None) -> ImagegateError:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = upstream_text(err.get("message") or f"HTTP {status}")
        if isinstance(err.get("code"), str) and err["code"] in POLICY_CODES:
            param = err.get("param")
            return ContentPolicyViolation(f"{provider}: {message}", param=param if isinstance(param, str) else "prompt")
    else:
        message = f"HTTP {status}"
    return error_for_status(provider, status, message, retry_after=retry_after)


# --- streamed answers (partial images) -------------------------------------------------------
#
# With `stream: true` the Images API answers `text/event-stream`, one `event: <type>` and
# `data: <json>` per event, the data's `type` repeating the event's name (the provider wire-format
# reference 1.5, from openai-python types/image_gen_*_event.py and image_edit_*_event.py):
#   image_generation.partial_image, image_edit.partial_image   b64_json, partial_image_index, ...
#   image_generation.completed, image_edit.completed           b64_json, usage (as the JSON answer's)
# `partial_images` (0 to 3) asks for that many partial events before the completed one; "the final
# image may be sent before the full number of partial images" (openai-python resources/images.py).
# A failure is data with a top-level `error` object (what openai-python's _streaming.py raises as
# an APIError, `event: error` or not) or, in the Responses API's form, `{"type": "error", "code",
# "message", "param"}` (openai-python types/responses/response_error_event.py). A `[DONE]` data
# ends the stream if one is sent (_streaming.py stops there; whether images send it is unconfirmed).
# n > 1: a completed event carries one b64_json and no index, so each is one image and their usages
# add up (one event per image is unconfirmed; several are taken as they come).

STREAM_DONE = b"[DONE]"
# An error event comes in a 200 answer, so it has no HTTP status of its own: it is read as the
# same error body with the status its OpenAI `code`, else `type`, stands for (OpenAI's error
# codes guide: invalid_request_error is a 400, rate_limit_exceeded and insufficient_quota are
# 429s, server_error a 500; image_generation_user_error is the image tool's 400, QuantumNous/new-api#1234).
EVENT_ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "invalid_request_error": 400,
    "image_generation_user_error": 400,
    "server_error": 500,
}


def streamed_fields(fields: dict[str, Any], request: ProviderRequest) -> dict[str, Any]:
    """The call's fields asking for the event stream and the client's number of partial images;
    the gateway's own values, over anything passed through."""
    return {**fields, "stream": True, "partial_images": request.partial_images}


def event_error(provider: str, data: dict[str, Any]) -> ImagegateError:
    """An error event, mapped as `_error` maps the same body in an HTTP error answer."""
    err = data["error"] if isinstance(data.get("error"), dict) else data
    code, kind = err.get("code"), err.get("type")
    status = EVENT_ERROR_STATUS.get(code if isinstance(code, str) else "") or EVENT_ERROR_STATUS.get(
        kind if isinstance(kind, str) else "", 500
    )
    mapped = _error(provider, status, {"error": err}, None)
    if isinstance(mapped, ContentPolicyViolation):
        return mapped
    # The same class and code, but a message that does not claim an HTTP status the upstream never sent.
    message = upstream_text(err.get("message") or "no message")
    text = f"{provider} sent an error in its event stream: {message}"
    return type(mapped)(text, param=mapped.param, code=mapped.code, retry_after=mapped.retry_after)


class StreamedImages:
    """The events of one streamed answer, put together: each partial image is reported at once (one
    that is not an image is skipped and logged: the answer does not need it), each completed event
    is kept as the answer's next image, and the first error event raises."""

    def __init__(
        self, provider: str, on_partial: PartialListener, image_of: Callable[[dict[str, Any]], Awaitable[ProviderImage]]
    ) -> None:
        self.provider = provider
        self.on_partial = on_partial
        self.image_of = image_of  # a completed event's image, as the JSON answer's (b64_json, or a url fetched)
        self.events = 0
        self.images: list[ProviderImage] = []
        self.usages: list[dict[str, Any]] = []
        # An OpenAI-compatible server that ignores `stream` answers its plain JSON (`{"data": [...]}`,
        # no event `type`): kept whole, and read as a plain call's answer (`unstreamed`).
        self.unstreamed: dict[str, Any] | None = None

    async def add(self, payload: bytes) -> None:
        name = self.provider
        data = _event_json(name, payload)
        self.events += 1
        if not isinstance(data, dict):
            raise UpstreamBadResponse(f"{name} sent a stream event that is not a JSON object.")
        kind = data.get("type")
        if isinstance(data.get("error"), dict) or kind == "error":
            raise event_error(name, data)
        if kind is None and self.events == 1 and isinstance(data.get("data"), list):
            self.unstreamed = data
            return
        if not isinstance(kind, str):
            return  # not an image event: nothing of the answer's
        if kind.endswith(".partial_image"):
            self._partial(data)
        elif kind.endswith(".completed"):
            self.images.append(await self.image_of(data))
            self.usages.append(data["usage"] if isinstance(data.get("usage"), dict) else {})

    def _partial(self, data: dict[str, Any]) -> None:
        b64 = data.get("b64_json")
        try:
            if not (isinstance(b64, str) and b64):
                raise ValueError("missing")
            blob, fmt = decode_b64_image(b64)
        except ValueError as exc:
            log.warning("%s: a partial image was skipped: its b64_json is %s", self.provider, exc)
            return
        self.on_partial(ProviderImage(blob, MIME_BY_FORMAT[fmt]))

    def result(self) -> ProviderResult:
        name = self.provider
        if not self.events:  # a 2xx that is not an event stream (a proxy's page, JSON without stream)
            raise UpstreamBadResponse(f"{name} sent a streamed answer without any events.")
        if not self.images:
            raise NoImageGenerated(f"{name}'s event stream ended without a completed image.")
        usages = self.usages
        return ProviderResult(
            images=self.images,
            input_tokens=sum(token_count(u.get("input_tokens")) for u in usages),
            output_tokens=sum(token_count(u.get("output_tokens")) for u in usages),
            input_details=_summed([token_split(u.get("input_tokens_details")) for u in usages]),
            output_details=_summed([token_split(u.get("output_tokens_details")) for u in usages]),
        )


def _summed(splits: list[TokenSplit | None]) -> TokenSplit | None:
    """The events' splits added up; None when none of them gave one."""
    given = [split for split in splits if split is not None]
    return sum(given[1:], given[0]) if given else None


def _event_json(provider: str, payload: bytes) -> Any:
    try:
        return jsonio.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UpstreamBadResponse(f"{provider} sent a stream event that is not valid JSON.") from exc


class OpenAIProvider(HttpProvider):
    provider_id = "openai"
    key_env_var = "OPENAI_API_KEY"
    base_url_env_var = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        fields = build_fields(request)
        if request.on_partial is not None:
            return await self._stream("/images/generations", request.on_partial, json=streamed_fields(fields, request))
        return await self._call("/images/generations", json=fields)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        fields = build_fields(request)
        if request.on_partial is not None:
            fields = streamed_fields(fields, request)  # as form fields: stream=true, partial_images=N
        data: dict[str, list[str]] = {}
        for key, value in fields.items():
            for name, text in _form_pairs(key, value):
                data.setdefault(name, []).append(text)
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for index, image in enumerate(request.images):
            ext = (sniff_format(image.data) or "png").replace("jpeg", "jpg")
            files.append(("image[]", (f"image-{index}.{ext}", image.data, image.mime_type)))
        if request.mask is not None:
            files.append(("mask", ("mask.png", request.mask.data, request.mask.mime_type)))
        if request.on_partial is not None:
            return await self._stream("/images/edits", request.on_partial, data=data, files=files)
        return await self._call("/images/edits", data=data, files=files)

    def error(self, response: UpstreamResponse) -> ImagegateError:
        """A non-2xx answer: OpenAI's error body, else the status."""
        return _error(
            self.provider_id, response.status_code, json_or_none(response.body), retry_after_seconds(response.headers)
        )

    async def _call(self, path: str, **body: Any) -> ProviderResult:
        response = await send_checked(
            self.client,
            "POST",
            self.base_url + path,
            provider=self.provider_id,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            headers=self._auth,
            error=self.error,
            **body,
        )
        return await self._parse(parse_json(self.provider_id, response.body))

    async def _stream(self, path: str, on_partial: PartialListener, **body: Any) -> ProviderResult:
        """One call answered as an event stream (see `StreamedImages`); the transport's contract
        otherwise: errors before the stream as `self.error`, a dropped connection, the size cap."""
        answer = StreamedImages(self.provider_id, on_partial, self._image_bytes)
        events = stream_events(
            self.client,
            "POST",
            self.base_url + path,
            provider=self.provider_id,
            timeout=self.timeout,
            max_bytes=self.max_response_bytes,
            headers=self._auth,
            error=self.error,
            json_whole=True,
            **body,
        )
        async with contextlib.aclosing(events):
            async for payload in events:
                if payload.startswith(STREAM_DONE):
                    break
                if payload and not payload.isspace():
                    await answer.add(payload)
                del payload  # not held while the next event (megabytes more) comes in
        if answer.unstreamed is not None:
            return await self._parse(answer.unstreamed)
        return answer.result()

    async def _parse(self, data: Any) -> ProviderResult:
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise NoImageGenerated(f"{self.provider_id} returned no images.")
        images: list[ProviderImage] = []
        texts: list[str] = []
        for item in items:
            if not isinstance(item, dict):
                raise UpstreamBadResponse(f"{self.provider_id} sent a malformed image entry.")
            image = await self._image_bytes(item)
            text = upstream_text(item["revised_prompt"], 4000) if item.get("revised_prompt") else None
            images.append(ProviderImage(image.blob, image.mime_type, text))
            if text:
                texts.append(text)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ProviderResult(
            images=images,
            text=texts[0] if texts else None,
            input_tokens=token_count(usage.get("input_tokens")),
            output_tokens=token_count(usage.get("output_tokens")),
            input_details=token_split(usage.get("input_tokens_details")),
            output_details=token_split(usage.get("output_tokens_details")),
        )

    async def _image_bytes(self, item: dict[str, Any]) -> ProviderImage:
        b64, url = item.get("b64_json"), item.get("url")
        if isinstance(b64, str) and b64:
            try:
                blob, fmt = decode_b64_image(b64)
            except ValueError as exc:
                raise UpstreamBadResponse(f"{self.provider_id} sent b64_json that is {exc}.") from exc
            return ProviderImage(blob, MIME_BY_FORMAT[fmt])
        if not (isinstance(url, str) and url):
            raise UpstreamBadResponse(f"{self.provider_id} sent an image with neither b64_json nor url.")
        return await download_image(
            self.client, url, provider=self.provider_id, timeout=self.timeout, max_bytes=self.max_response_bytes
        )


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py): built-in providers register as outside ones do."""
    register(OpenAIProvider.provider_spec())
