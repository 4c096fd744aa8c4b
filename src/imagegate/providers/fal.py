"""fal, queue API: `POST {base}/{endpoint id}`, then poll the returned status URL, then fetch the result.

fal serves Nano Banana Pro as `fal-ai/nano-banana-pro` and edits as `fal-ai/nano-banana-pro/edit`.
The input is one flat JSON object whose field names come from the catalog binding; input images
travel as data URIs in `image_urls` (we never upload to fal's storage). The status, result and
cancel URLs drop the `/edit` sub-path, so the URLs returned by submit are used as they are and
only rebuilt (`{base}/{owner}/{alias}/requests/{id}`) when submit leaves them out.

`timeout` is one deadline for the whole job (submit, polling, result and downloads). This module
only describes the job (`QueueJob`); `transport.run_job` submits, polls (retrying transient
failures), cancels the queued job when the deadline passes, polling fails for good or the caller
goes away (so fal does not keep working on, and billing for, an answer nobody waits for), and
downloads the outputs. Output images come as URLs to fal's CDN, or as data URIs with
`sync_mode`; either way the bytes are checked to be an image before they are handed on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ContentPolicyViolation, ImagegateError, NoImageGenerated, UpstreamBadResponse, UpstreamError
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

PROVIDER = "fal"
# Queue states (fal_client `Queued` / `InProgress` / `Completed`): the first two mean "ask again".
PENDING_STATES = frozenset({"IN_QUEUE", "IN_PROGRESS"})
COMPLETED = "COMPLETED"
POLICY_TYPE = "content_policy_violation"
NO_MEDIA_TYPE = "no_media_generated"


@dataclass(frozen=True)
class QueueUrls:
    """Where one submitted job lives. Taken from the submit answer, never derived from the
    submit path: for `/edit` endpoints the two differ (spec section 4.3, "Gotcha")."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


# --- request ---------------------------------------------------------------------------------


def _images_and_prompt(request: ProviderRequest) -> tuple[list[str], str]:
    """Input images as data URIs; an emulated mask rides along as one more image plus a note
    telling the model what it is (the gateway composites the original back afterwards)."""
    images = [image.data_uri() for image in request.images]
    prompt = request.prompt
    if request.mask is not None and request.plan.emulates("mask"):
        images.append(request.mask.data_uri())
        prompt = f"{prompt}\n\n{MASK_NOTE}"
    return images, prompt


def _option_value(name: str, value: Any) -> Any:
    """fal's safety_tolerance is a string enum: an integer 4 is a 422 there."""
    if name == "safety_tolerance" and not isinstance(value, bool):
        return str(value)
    return value


def build_input(request: ProviderRequest) -> dict[str, Any]:
    """The submit body. Every gateway value goes where its plan (the catalog binding, shown to
    users in GET /models) says, so the catalog and the wire cannot drift apart; a parameter the
    binding does not mention keeps its own name."""
    plan = request.plan
    images, prompt = _images_and_prompt(request)
    values: dict[str, Any] = {
        "prompt": prompt,
        "n": request.n,
        "aspect_ratio": request.layout.aspect_ratio,
        "resolution": request.layout.resolution,
        "seed": request.seed,
        "output_format": request.output_format,  # set only when fal can produce it natively
        "image": images or None,
    }
    if request.mask is not None and not plan.emulates("mask"):
        values["mask"] = request.mask.data_uri()
    body: dict[str, Any] = {}
    for param, value in values.items():
        plan.place(body, param, value, undeclared=param)
    for param, value in request.options.items():
        plan.place(body, param, _option_value(param, value), undeclared=param)
    merge_passthrough(body, request.extra, reserved=plan.reserved())
    return body


def fallback_urls(base_url: str, endpoint: str, request_id: str) -> QueueUrls:
    """What fal_client's `from_request_id` builds: `{owner}/{alias}/requests/{id}`, without any
    sub-path such as `/edit`."""
    app = "/".join(endpoint.split("/")[:2])
    root = f"{base_url}/{app}/requests/{request_id}"
    return QueueUrls(request_id, f"{root}/status", root, f"{root}/cancel")


def queue_urls(data: Any, base_url: str, endpoint: str) -> QueueUrls:
    if not isinstance(data, dict):
        raise _bad_response("a submit answer that is not an object")
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise _bad_response("a submit answer without a request_id")
    built = fallback_urls(base_url, endpoint, request_id)

    def url(key: str, default: str) -> str:
        value = data.get(key)
        return value if isinstance(value, str) and value else default

    return QueueUrls(
        request_id,
        url("status_url", built.status_url),
        url("response_url", built.response_url),
        url("cancel_url", built.cancel_url),
    )


# --- errors ----------------------------------------------------------------------------------


def _bad_response(what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"{PROVIDER} sent {what}.")


def _detail_items(detail: Any) -> list[tuple[str, str | None]]:
    """(message, type) pairs from fal's `detail`: a list of pydantic-style items, or a string."""
    if isinstance(detail, str):
        return [(detail, None)]
    if not isinstance(detail, list):
        return []
    items: list[tuple[str, str | None]] = []
    for item in detail:
        if not isinstance(item, dict):
            items.append((upstream_text(item), None))
            continue
        loc = item.get("loc")
        where = ".".join(upstream_text(part, 100) for part in loc[:20]) if isinstance(loc, list) else ""
        message = upstream_text(item.get("msg") or "")
        kind = item.get("type")
        items.append((f"{where}: {message}" if where else message, kind if isinstance(kind, str) else None))
    return items


def typed_error(error_type: str | None, message: str) -> ImagegateError | None:
    """The fal error types that mean something to a client; None for the rest."""
    if error_type == POLICY_TYPE:
        return ContentPolicyViolation(
            f"{PROVIDER}: the content policy blocked this request. {message}".strip(), param="prompt"
        )
    if error_type == NO_MEDIA_TYPE:
        return NoImageGenerated(f"{PROVIDER} generated no image. {message}".strip())
    return None


def http_error(response: UpstreamResponse) -> ImagegateError:
    """A non-2xx answer from any queue endpoint. Error type first (body `detail[].type`, body
    `error_type` or header `x-fal-error-type`, as fal_client reads them), then the status."""
    data = json_or_none(response.body)
    data = data if isinstance(data, dict) else {}
    items = _detail_items(data.get("detail"))
    types = [kind for _, kind in items if kind]
    for key in (data.get("error_type"), response.headers.get("x-fal-error-type")):
        if isinstance(key, str) and key:
            types.append(key)
    message = "; ".join(text for text, _ in items if text) or f"HTTP {response.status_code}"
    for kind in (POLICY_TYPE, NO_MEDIA_TYPE):
        if kind in types:
            error = typed_error(kind, message)
            assert error is not None
            return error
    return error_for_status(PROVIDER, response.status_code, message, retry_after=retry_after_seconds(response.headers))


def completed_error(status: dict[str, Any]) -> ImagegateError | None:
    """A COMPLETED status may carry the job's failure (`error`, `error_type`)."""
    error, error_type = status.get("error"), status.get("error_type")
    if not error and not error_type:
        return None
    message = upstream_text(error or error_type)
    kind = error_type if isinstance(error_type, str) else None
    return typed_error(kind, message) or UpstreamError(
        f"{PROVIDER} failed the request ({kind or 'error'}): {message}", code="upstream_request_failed"
    )


# --- output ----------------------------------------------------------------------------------


def _image_entries(data: Any) -> tuple[list[str], str | None]:
    """The output's image URLs and its description; no images at all is fal's "no media"."""
    if not isinstance(data, dict):
        raise _bad_response("a result that is not an object")
    entries = data.get("images")
    if entries is None or entries == []:
        raise NoImageGenerated(f"{PROVIDER} returned no images.")
    if not isinstance(entries, list):
        raise _bad_response("a malformed images list")
    urls: list[str] = []
    for entry in entries:
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise _bad_response("an image entry without a url")
        urls.append(url)
    description = data.get("description")
    return urls, description if isinstance(description, str) and description.strip() else None


# --- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueJob(PollingJob):
    """One queued request: submitted to its endpoint, polled at the status URL, its output read
    from the response URL, cancelled at the cancel URL (all as the submit answer names them)."""

    provider = PROVIDER
    base_url: str
    api_key: str
    request: ProviderRequest
    endpoint: str

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Key {self.api_key}"}

    def submit(self, remaining: float) -> Call:
        headers = dict(self._auth)
        seconds = math.floor(remaining)
        if seconds > 1:  # fal's server-side timeout must be more than 1 s; without it fal keeps going
            headers["x-fal-request-timeout"] = str(seconds)
        return Call("POST", f"{self.base_url}/{self.endpoint}", headers, json=build_input(self.request))

    def submitted(self, response: UpstreamResponse) -> JobStatus:
        urls = queue_urls(parse_json(PROVIDER, response.body), self.base_url, self.endpoint)
        return JobStatus(
            "pending",
            poll=Call("GET", urls.status_url, self._auth, params={"logs": "0"}),
            cancel=Call("PUT", urls.cancel_url, self._auth),
            result=Call("GET", urls.response_url, self._auth),
            job_id=urls.request_id,
        )

    def polled(self, response: UpstreamResponse) -> JobStatus:
        status = parse_json(PROVIDER, response.body)
        if not isinstance(status, dict) or not isinstance(status.get("status"), str):
            raise _bad_response("a status answer without a status")
        state = status["status"]
        if state == COMPLETED:
            error = completed_error(status)
            return JobStatus.failed(error) if error is not None else JobStatus("done")  # outputs at `result`
        if state not in PENDING_STATES:
            raise _bad_response(f"an unknown queue status {state!r}")
        return JobStatus("pending")

    def result(self, response: UpstreamResponse) -> JobStatus:
        urls, description = _image_entries(parse_json(PROVIDER, response.body))
        return JobStatus.done(urls, description)

    def error(self, response: UpstreamResponse) -> ImagegateError:
        return http_error(response)


# --- the adapter -----------------------------------------------------------------------------


class FalProvider(PollingProvider):
    provider_id = "fal"
    key_env_var = "FAL_KEY"
    base_url_env_var = "FAL_BASE_URL"
    default_base_url = "https://queue.fal.run"
    # Seconds between status polls; tests shorten it.
    poll_interval: float = 0.5

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._run(request, request.plan.upstream_for("t2i"))

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._run(request, request.plan.upstream_for("edit"))

    async def _run(self, request: ProviderRequest, endpoint: str) -> ProviderResult:
        return await self.run_polling(QueueJob(self.base_url, self.api_key, request, endpoint))


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py): built-in providers register as outside ones do."""
    register(FalProvider.provider_spec())
