"""Any OpenAI-compatible Images upstream (OpenAI itself, a hosted gateway, another imagegate).

Generations are JSON, edits multipart (`image[]`, `mask`, every other field as a form field).
Which of our normalized values are sent, and under what name, comes from the request's plan
(the catalog binding's).
The gateway asks for `b64_json` where the binding says the upstream takes `response_format`; a `url`
answer is downloaded all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import wire
from ..errors import ContentPolicyViolation, ImagegateError, NoImageGenerated, UpstreamBadResponse
from ..imaging import MIME_BY_FORMAT, decode_b64_image, sniff_format
from ..plugins import ProviderSpec
from .base import (
    HttpProvider,
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
    upstream_text,
)

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


class OpenAIProvider(HttpProvider):
    provider_id = "openai"
    key_env_var = "OPENAI_API_KEY"
    base_url_env_var = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._call("/images/generations", json=build_fields(request))

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        data: dict[str, list[str]] = {}
        for key, value in build_fields(request).items():
            for name, text in _form_pairs(key, value):
                data.setdefault(name, []).append(text)
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for index, image in enumerate(request.images):
            ext = (sniff_format(image.data) or "png").replace("jpeg", "jpg")
            files.append(("image[]", (f"image-{index}.{ext}", image.data, image.mime_type)))
        if request.mask is not None:
            files.append(("mask", ("mask.png", request.mask.data, request.mask.mime_type)))
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
