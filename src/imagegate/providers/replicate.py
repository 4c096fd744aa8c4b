"""Replicate predictions API: `POST {base}/v1/models/{owner}/{name}/predictions`, then polling.

A prediction is created with `Prefer: wait` (Replicate holds the answer up to 60 s, which is
usually enough for one image) and `Cancel-After` (so Replicate stops it even if we vanish).
If it is not finished by then, `urls.get` is polled until it is, or until `timeout` (the
deadline of the whole prediction, polling and download included) passes; then it is canceled.
This module only describes the prediction (`PredictionJob`); `transport.run_job` does the
submitting, polling, retrying, cancelling and downloading.

The input is built from the request's plan (the catalog binding's): a gateway value goes to the
field its `to` names (minus the `input.` prefix) unless the gateway emulates it. Images travel as
data URIs. A mask, which Replicate's Nano Banana Pro does not take, is sent as one more image
plus an instruction, and the gateway composites the original back outside it afterwards.

The output is a URI (google/nano-banana-pro) or a list of URIs (bytedance/seedream-*); either
may be an https URL (deleted by Replicate after an hour, so it is downloaded at once) or a
`data:` URI. A failed prediction carries only an error string, so capacity and safety
failures are told apart by their wording (the exact texts are not documented).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ContentPolicyViolation,
    ImagegateError,
    NoImageGenerated,
    UpstreamAtCapacity,
    UpstreamBadResponse,
    UpstreamError,
)
from ..plugins import ProviderSpec
from .base import (
    ProviderRequest,
    ProviderResult,
    merge_passthrough,
)
from .gemini import MASK_NOTE
from .transport import (
    Call,
    JobStatus,
    PollingJob,
    PollingProvider,
    UpstreamResponse,
    error_for_status,
    json_or_none,
    parse_json,
    retry_after_seconds,
    upstream_text,
)

PROVIDER = "replicate"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
PENDING_STATUSES = frozenset({"starting", "processing"})
# Replicate holds a create request open at most this long (`Prefer: wait=N`, N <= 60).
MAX_PREFER_WAIT_S = 60
# Replicate's own deadline is a safety net for when we cannot cancel; too short a value could
# abort a prediction before it starts, so it never goes below this.
MIN_CANCEL_AFTER_S = 5
# Error texts of failed predictions, lower-cased with "_" as " " (exact wording is UNCONFIRMED).
CAPACITY_MARKERS = (
    "capacity",
    "rate limit",
    "ratelimit",
    "throttled",
    "429",
    "overloaded",
    "unavailable",
    "resource exhausted",
    "high demand",
)
SAFETY_MARKERS = ("safety", "nsfw", "sensitive", "flagged", "e005")
# Field names used when a binding does not declare the parameter at all.
DEFAULT_FIELDS = {"prompt": "prompt", "image": "image_input"}
# Gateway output format names -> Replicate's enum values.
FORMAT_NAMES = {"jpeg": "jpg"}


# --- request ---------------------------------------------------------------------------------


def build_input(request: ProviderRequest) -> dict[str, Any]:
    """The prediction's `input` object, from the request and its plan."""
    plan = request.plan
    prompt = request.prompt
    images = [image.data_uri() for image in request.images]
    values: dict[str, Any] = {}
    if request.mask is not None:
        if plan.emulates("mask"):
            images.append(request.mask.data_uri())
            prompt = f"{prompt}\n\n{MASK_NOTE}"
        else:
            values["mask"] = request.mask.data_uri()
    fmt = request.output_format
    values.update(
        {
            "prompt": prompt,
            "image": images or None,
            "aspect_ratio": request.layout.aspect_ratio,
            "resolution": request.layout.resolution,
            "seed": request.seed,
            "output_format": FORMAT_NAMES.get(fmt, fmt) if fmt else None,
            "output_compression": request.output_compression if fmt else None,
            "n": request.n if request.n > 1 else None,
        }
    )
    body: dict[str, Any] = {}
    if _takes_custom_size(request):
        # A flexible model: the layout's exact (clamped) pixels say everything ratio and tier would.
        values["aspect_ratio"] = values["resolution"] = None
        body.update(size="custom", width=request.layout.width, height=request.layout.height)
    for param, value in values.items():
        plan.place(body, param, value, undeclared=DEFAULT_FIELDS.get(param), prefix="input.")
    for param, value in request.options.items():
        plan.place(body, param, value, undeclared=param, prefix="input.")
    reserved = [*plan.reserved(prefix="input."), *((f,) for f in DEFAULT_FIELDS.values())]
    merge_passthrough(body, request.extra, reserved=reserved)
    return body


def _takes_custom_size(request: ProviderRequest) -> bool:
    """The plan sends `size` as width and height (seedream's size=custom)."""
    return "input.width" in request.plan.paths("size")


def cancel_after(timeout: float) -> str:
    """`Cancel-After` as a Go-style duration, e.g. "300s"."""
    return f"{max(MIN_CANCEL_AFTER_S, math.ceil(timeout))}s"


def prefer_wait(remaining: float) -> str:
    return f"wait={min(MAX_PREFER_WAIT_S, max(1, math.floor(remaining)))}"


# --- responses -------------------------------------------------------------------------------


def _bad_response(what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"{PROVIDER} sent {what}.")


def problem_message(body: bytes, status: int) -> str:
    """The text of an RFC 7807 error (`title`, `detail`), or of a bare `{"detail": ...}`."""
    data = json_or_none(body)
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
    return error_for_status(PROVIDER, response.status_code, message, retry_after=retry_after_seconds(response.headers))


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
        return UpstreamError(f"The {PROVIDER} prediction was {status}: {message}", code="upstream_prediction_canceled")
    if _matches(message, CAPACITY_MARKERS):
        return UpstreamAtCapacity(f"{PROVIDER}: the model is at capacity: {message}")
    if _matches(message, SAFETY_MARKERS):
        return ContentPolicyViolation(f"The upstream safety system rejected the request: {message}", param="prompt")
    return UpstreamError(f"The {PROVIDER} prediction failed: {message}", code="upstream_prediction_failed")


def output_uris(prediction: dict[str, Any], limit: int) -> list[str]:
    """The output URIs (one string or a list of them), at most `limit`."""
    output = prediction.get("output")
    if isinstance(output, str):
        output = [output]
    if not output:
        raise NoImageGenerated(f"The {PROVIDER} prediction succeeded without an output.")
    if not isinstance(output, list) or not all(isinstance(uri, str) and uri for uri in output):
        raise _bad_response("an output that is neither a URI nor a list of URIs")
    return output[: max(limit, 1)]


# --- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionJob(PollingJob):
    """One prediction: created with `Prefer: wait`, polled at `urls.get`, cancelled at `urls.cancel`
    (or, when the answer leaves them out, at the same paths under the base URL by its id)."""

    provider = PROVIDER
    base_url: str
    api_key: str
    request: ProviderRequest
    timeout: float

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def submit(self, remaining: float) -> Call:
        url = f"{self.base_url}/v1/models/{self.request.upstream_model}/predictions"
        headers = {**self._auth, "prefer": prefer_wait(remaining), "cancel-after": cancel_after(self.timeout)}
        return Call("POST", url, headers, json={"input": build_input(self.request)})

    def submitted(self, response: UpstreamResponse) -> JobStatus:
        return self.polled(response)

    def polled(self, response: UpstreamResponse) -> JobStatus:
        prediction = prediction_from(response)
        status = prediction["status"]
        if status == "succeeded":
            return JobStatus.done(output_uris(prediction, self.request.n))
        if status in TERMINAL_STATUSES:
            return JobStatus.failed(failure_error(prediction))
        poll = self._url(prediction, "get", "")
        if poll is None:
            raise _bad_response("an unfinished prediction with neither urls.get nor an id")
        cancel = self._url(prediction, "cancel", "/cancel")
        return JobStatus(
            "pending",
            poll=Call("GET", poll, self._auth),
            cancel=Call("POST", cancel, self._auth) if cancel else None,
            job_id=prediction.get("id") if isinstance(prediction.get("id"), str) else None,
        )

    def error(self, response: UpstreamResponse) -> ImagegateError:
        return http_error(response)

    def _url(self, prediction: dict[str, Any], name: str, suffix: str) -> str | None:
        urls = prediction.get("urls")
        url = urls.get(name) if isinstance(urls, dict) else None
        if isinstance(url, str) and url:
            return url
        if isinstance(prediction.get("id"), str) and prediction["id"]:
            return f"{self.base_url}/v1/predictions/{prediction['id']}{suffix}"
        return None


# --- the adapter -----------------------------------------------------------------------------


class ReplicateProvider(PollingProvider):
    provider_id = PROVIDER
    key_env_var = "REPLICATE_API_TOKEN"
    base_url_env_var = "REPLICATE_BASE_URL"
    default_base_url = "https://api.replicate.com"
    # Seconds between polls of an unfinished prediction; tests shorten it.
    poll_interval: float = 1.0

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._predict(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._predict(request)

    async def _predict(self, request: ProviderRequest) -> ProviderResult:
        return await self.run_polling(PredictionJob(self.base_url, self.api_key, request, self.timeout))


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py): built-in providers register as outside ones do."""
    register(ReplicateProvider.provider_spec())
