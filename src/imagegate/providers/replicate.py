"""Replicate predictions API: `POST {base}/v1/models/{owner}/{name}/predictions`, then polling.

A prediction is created with `Prefer: wait` (Replicate holds the answer up to 60 s, which is
usually enough for one image) and `Cancel-After` (so Replicate stops it even if we vanish).
If it is not finished by then, `urls.get` is polled until it is, or until `timeout` (the
deadline of the whole prediction, polling and download included) passes; then it is canceled.

The input is built from the catalog binding: a gateway value goes to the field its `to` names
(minus the `input.` prefix) unless the binding says the gateway emulates it. Images travel as
data URIs. A mask, which Replicate's Nano Banana Pro does not take, is sent as one more image
plus an instruction, and the gateway composites the original back outside it afterwards.

The output is a URI (google/nano-banana-pro) or a list of URIs (bytedance/seedream-*); either
may be an https URL (deleted by Replicate after an hour, so it is downloaded at once) or a
`data:` URI. A failed prediction carries only an error string, so capacity and safety
failures are told apart by their wording (the exact texts are not documented).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import ContentPolicyViolation, ImagegateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ..imaging import MIME_BY_FORMAT, ImageBytes, decode_b64_image, sniff_format
from ..plugins import ProviderSpec
from .base import (
    HttpProvider,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    binding_targets,
    merge_passthrough,
    sent_field,
)
from .gemini import MASK_NOTE
from .upstream import UpstreamResponse, error_for_status, parse_json, retry_after_seconds, send, upstream_text

PROVIDER = "replicate"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
PENDING_STATUSES = frozenset({"starting", "processing"})
# Replicate holds a create request open at most this long (`Prefer: wait=N`, N <= 60).
MAX_PREFER_WAIT_S = 60
# Replicate's own deadline is a safety net for when we cannot cancel; too short a value could
# abort a prediction before it starts, so it never goes below this.
MIN_CANCEL_AFTER_S = 5
# A cancel is sent after our deadline has passed: it gets a little time of its own, no more.
CANCEL_TIMEOUT_S = 2.0
# The prediction is paid for once it succeeded: its download is not cut off by a deadline
# that has only a few milliseconds left.
MIN_DOWNLOAD_TIMEOUT_S = 5.0
# Polling is a GET, so like replicate-python we retry these rather than lose a paid prediction.
POLL_RETRY_STATUSES = frozenset({429, 503, 504})
# Error texts of failed predictions, lower-cased with "_" as " " (exact wording is UNCONFIRMED).
CAPACITY_MARKERS = ("capacity", "rate limit", "ratelimit", "throttled", "429", "overloaded", "unavailable",
                    "resource exhausted", "high demand")
SAFETY_MARKERS = ("safety", "nsfw", "sensitive", "flagged", "e005")
# Field names used when a binding does not declare the parameter at all.
DEFAULT_FIELDS = {"prompt": "prompt", "image": "image_input"}
# Gateway output format names -> Replicate's enum values.
FORMAT_NAMES = {"jpeg": "jpg"}


# --- request ---------------------------------------------------------------------------------


def input_field(request: ProviderRequest, param: str) -> str | None:
    """The `input` field a gateway value goes to, or None when the binding does not send it
    (emulated or not available, or a composite target such as `input.a + input.b`)."""
    target = sent_field(request.binding, param, undeclared=DEFAULT_FIELDS.get(param))
    if target is None or "+" in target or " " in target:
        return None
    return target.removeprefix("input.")


def _mask_is_emulated(request: ProviderRequest) -> bool:
    handling = request.binding.handling("mask")
    return handling is not None and handling.handling == "emulated"


def build_input(request: ProviderRequest) -> dict[str, Any]:
    """The prediction's `input` object, from the request and what the binding declares."""
    prompt = request.prompt
    images = [image.data_uri() for image in request.images]
    values: dict[str, Any] = {}
    if request.mask is not None:
        if _mask_is_emulated(request):
            images.append(request.mask.data_uri())
            prompt = f"{prompt}\n\n{MASK_NOTE}"
        else:
            values["mask"] = request.mask.data_uri()
    fmt = request.output_format
    values.update({
        "prompt": prompt,
        "image": images or None,
        "aspect_ratio": request.layout.aspect_ratio,
        "resolution": request.layout.resolution,
        "seed": request.seed,
        "output_format": FORMAT_NAMES.get(fmt, fmt) if fmt else None,
        "output_compression": request.output_compression if fmt else None,
        "n": request.n if request.n > 1 else None,
    })
    body: dict[str, Any] = {}
    if _takes_custom_size(request):
        # A flexible model: the layout's exact (clamped) pixels say everything ratio and tier would.
        values["aspect_ratio"] = values["resolution"] = None
        body.update(size="custom", width=request.layout.width, height=request.layout.height)
    for param, value in values.items():
        name = input_field(request, param)
        if name is not None and value is not None:
            body[name] = value
    for param, value in request.options.items():
        handling = request.binding.handling(param)
        if handling is None:
            body[param] = value
        elif (name := input_field(request, param)) is not None:
            body[name] = value
    reserved = [*binding_targets(request.binding, prefix="input."), *((f,) for f in DEFAULT_FIELDS.values())]
    merge_passthrough(body, request.extra, reserved=reserved)
    return body


def _takes_custom_size(request: ProviderRequest) -> bool:
    """The binding sends `size` as width and height (seedream's size=custom)."""
    size = request.binding.handling("size")
    return size is not None and size.to is not None and "input.width" in size.to


def cancel_after(timeout: float) -> str:
    """`Cancel-After` as a Go-style duration, e.g. "300s"."""
    return f"{max(MIN_CANCEL_AFTER_S, math.ceil(timeout))}s"


def prefer_wait(remaining: float) -> str:
    return f"wait={min(MAX_PREFER_WAIT_S, max(1, math.floor(remaining)))}"


# --- responses -------------------------------------------------------------------------------


def _bad_response(what: str) -> UpstreamError:
    return UpstreamError(f"{PROVIDER} sent {what}.", code="upstream_bad_response")


def problem_message(body: bytes, status: int) -> str:
    """The text of an RFC 7807 error (`title`, `detail`), or of a bare `{"detail": ...}`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    parts: list[str] = []
    if isinstance(data, dict):
        title, detail = data.get("title"), data.get("detail")
        if isinstance(title, str) and title:
            parts.append(title)
        if isinstance(detail, str) and detail:
            parts.append(detail.strip())
        elif detail:
            parts.append(upstream_text(detail))
    return ": ".join(parts) or f"HTTP {status}"


def http_error(response: UpstreamResponse) -> ImagegateError:
    message = problem_message(response.body, response.status_code)
    return error_for_status(PROVIDER, response.status_code, message,
                            retry_after=retry_after_seconds(response.headers))


def prediction_from(response: UpstreamResponse) -> dict[str, Any]:
    data = parse_json(PROVIDER, response.body)
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise _bad_response("a prediction without a status")
    status = data["status"]
    if status not in TERMINAL_STATUSES and status not in PENDING_STATUSES:
        raise _bad_response(f"a prediction with an unknown status {status!r}")
    return data


def _matches(text: str, markers: tuple[str, ...]) -> bool:
    folded = text.lower().replace("_", " ")
    return any(marker in folded for marker in markers)


def failure_error(prediction: dict[str, Any]) -> ImagegateError:
    """A failed or canceled prediction as our error; capacity first, since a fallback may help."""
    status = prediction.get("status")
    error = prediction.get("error")
    message = upstream_text(error).strip() if error else "no error message"
    if status in ("canceled", "aborted"):
        return UpstreamError(f"The {PROVIDER} prediction was {status}: {message}",
                             code="upstream_prediction_canceled")
    if _matches(message, CAPACITY_MARKERS):
        return UpstreamUnavailable(f"{PROVIDER}: the model is at capacity: {message}", code="upstream_at_capacity")
    if _matches(message, SAFETY_MARKERS):
        return ContentPolicyViolation(f"The upstream safety system rejected the request: {message}", param="prompt")
    return UpstreamError(f"The {PROVIDER} prediction failed: {message}", code="upstream_prediction_failed")


def output_uris(prediction: dict[str, Any], limit: int) -> list[str]:
    """The output URIs (one string or a list of them), at most `limit`."""
    output = prediction.get("output")
    if isinstance(output, str):
        output = [output]
    if not output:
        raise UpstreamError(f"The {PROVIDER} prediction succeeded without an output.", code="no_image_generated")
    if not isinstance(output, list) or not all(isinstance(uri, str) and uri for uri in output):
        raise _bad_response("an output that is neither a URI nor a list of URIs")
    return output[: max(limit, 1)]


def image_from_bytes(data: bytes) -> ProviderImage:
    fmt = sniff_format(data)
    if fmt is None:
        raise _bad_response("an output that is not an image")
    return ProviderImage(ImageBytes(data), MIME_BY_FORMAT[fmt])


def image_from_data_uri(uri: str) -> ProviderImage:
    """A `data:` output, trusted by its bytes, not its declared type."""
    header, comma, payload = uri.partition(",")
    if not comma:
        raise _bad_response("a malformed data: URI")
    if not header.endswith(";base64"):
        return image_from_bytes(urllib.parse.unquote_to_bytes(payload))
    try:
        blob, fmt = decode_b64_image(payload)
    except ValueError as exc:
        raise _bad_response(f"a data: URI output that is {exc}") from exc
    return ProviderImage(blob, MIME_BY_FORMAT[fmt])


# --- the adapter -----------------------------------------------------------------------------


class ReplicateProvider(HttpProvider):
    provider_id = PROVIDER
    key_env_var = "REPLICATE_API_TOKEN"
    base_url_env_var = "REPLICATE_BASE_URL"
    default_base_url = "https://api.replicate.com"
    # Seconds between polls of an unfinished prediction; tests shorten it.
    poll_interval: float = 1.0
    # Cancels sent because the caller went away: kept here so they are not garbage collected.
    _background: ClassVar[set[asyncio.Task[None]]] = set()

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._predict(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._predict(request)

    async def _predict(self, request: ProviderRequest) -> ProviderResult:
        deadline = time.monotonic() + self.timeout
        prediction = await self._create(request, deadline)
        try:
            prediction = await self._settle(prediction, deadline)
        except ImagegateError:
            await self._cancel(prediction)  # nobody will collect it: stop paying for it
            raise
        except asyncio.CancelledError:
            # The caller gave up (client disconnected): stop Replicate too, without waiting for it.
            task = asyncio.get_running_loop().create_task(self._cancel(prediction))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise
        if prediction["status"] != "succeeded":
            raise failure_error(prediction)
        uris = output_uris(prediction, request.n)
        images = await asyncio.gather(*(self._download(uri, deadline) for uri in uris))
        return ProviderResult(images=list(images))

    # --- HTTP ---

    def _remaining(self, deadline: float, prediction: dict[str, Any] | None = None) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            where = f" (prediction {prediction.get('id')} still {prediction.get('status')})" if prediction else ""
            raise UpstreamTimeout(f"{PROVIDER} did not finish within {self.timeout:g} s{where}.")
        return left

    async def _create(self, request: ProviderRequest, deadline: float) -> dict[str, Any]:
        remaining = self._remaining(deadline)
        url = f"{self.base_url}/v1/models/{request.binding.upstream_for(request.mode)}/predictions"
        headers = {**self._auth, "prefer": prefer_wait(remaining), "cancel-after": cancel_after(self.timeout)}
        response = await send(self.client, "POST", url, provider=PROVIDER, timeout=remaining,
                              max_bytes=self.max_response_bytes, json={"input": build_input(request)},
                              headers=headers)
        if not 200 <= response.status_code < 300:
            raise http_error(response)
        return prediction_from(response)

    def _get_url(self, prediction: dict[str, Any]) -> str:
        urls = prediction.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        if isinstance(url, str) and url:
            return url
        if isinstance(prediction.get("id"), str) and prediction["id"]:
            return f"{self.base_url}/v1/predictions/{prediction['id']}"
        raise _bad_response("an unfinished prediction with neither urls.get nor an id")

    async def _settle(self, prediction: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Poll until the prediction is terminal; UpstreamTimeout when the deadline passes first."""
        url = self._get_url(prediction)
        delay = self.poll_interval
        while prediction["status"] not in TERMINAL_STATUSES:
            await asyncio.sleep(min(delay, self._remaining(deadline, prediction)))
            remaining = self._remaining(deadline, prediction)
            try:
                response = await send(self.client, "GET", url, provider=PROVIDER, timeout=remaining,
                                      max_bytes=self.max_response_bytes, headers=self._auth)
            except UpstreamUnavailable:
                delay = self.poll_interval  # a dropped connection: the prediction runs on regardless
                continue
            if response.status_code in POLL_RETRY_STATUSES:
                delay = max(self.poll_interval, retry_after_seconds(response.headers) or 0.0)
                continue
            if response.status_code != 200:
                raise http_error(response)
            prediction, delay = prediction_from(response), self.poll_interval
        return prediction

    async def _cancel(self, prediction: dict[str, Any]) -> None:
        """Best effort: a failed cancel must never hide the error that made us send it."""
        if prediction.get("status") in TERMINAL_STATUSES:
            return
        urls = prediction.get("urls")
        url = urls.get("cancel") if isinstance(urls, dict) else None
        if not (isinstance(url, str) and url):
            if not (isinstance(prediction.get("id"), str) and prediction["id"]):
                return
            url = f"{self.base_url}/v1/predictions/{prediction['id']}/cancel"
        try:
            await send(self.client, "POST", url, provider=PROVIDER, timeout=CANCEL_TIMEOUT_S,
                       max_bytes=64 * 1024, headers=self._auth)
        except ImagegateError:
            pass

    async def _download(self, uri: str, deadline: float) -> ProviderImage:
        if uri.startswith("data:"):
            return image_from_data_uri(uri)
        # Output files are public (replicate.delivery): our token is not sent along.
        timeout = max(deadline - time.monotonic(), MIN_DOWNLOAD_TIMEOUT_S)
        response = await send(self.client, "GET", uri, provider=PROVIDER, timeout=timeout,
                              max_bytes=self.max_response_bytes)
        if response.status_code != 200:
            raise UpstreamError(f"Downloading the {PROVIDER} output gave HTTP {response.status_code}.")
        return image_from_bytes(response.body)


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py): built-in providers register as outside ones do."""
    register(ReplicateProvider.provider_spec())
