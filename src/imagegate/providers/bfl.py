"""Black Forest Labs FLUX API: submit a task, poll the polling URL it returns, download the sample.

    POST {base}/v1/{endpoint}   x-key: <key>   {"prompt": ..., "width"/"height" or "aspect_ratio", ...}
      -> {"id": ..., "polling_url": ...}
    GET {polling_url}           x-key: <key>
      -> {"status": "Pending" | "Ready" | "Request Moderated" | ..., "result": {"sample": <signed URL>}}
    GET {sample}                (no key: a signed blob URL that expires after about ten minutes)

Wire facts and their sources (none is in the spec; correct them here when BFL's docs say otherwise):
- endpoints, `x-key`, `polling_url`, `result.sample`, its ten-minute expiry, 402 (credits) and 429 (too
  many active tasks): black-forest-labs/skills, skills/bfl-api/SKILL.md and references/endpoints.md;
- "always use the polling_url returned" (the global endpoint routes tasks across clusters, so a
  polling URL built from the id may reach the wrong one): docs.bfl.ai "Image Generation with Text
  Prompts", API Endpoints; LiteLLM's handler (litellm/llms/black_forest_labs) polls it too, and only
  on hosts inside bfl.ai, since the key travels with the poll;
- FLUX.1 Kontext's body (`aspect_ratio` between 21:9 and 9:21, `prompt_upsampling`, `safety_tolerance`
  0-6, output_format jpeg|png): the OpenAPI schema FluxKontextProInputs published on docs.bfl.ml;
- FLUX.2's body (`width`/`height`, `input_image_2`..`input_image_8`, `disable_pup`, safety_tolerance
  0-5) and the statuses `Pending`, `Reasoning`, `Generating`, `Ready`, `Request Moderated`,
  `Content Moderated`, `Error`, `Task not found`: the BFL OpenAPI (api.bfl.ai/openapi.json) as
  summarised by third-party integrations; `Failed` is handled because LiteLLM and others do;
- BFL has no cancel endpoint (none in the OpenAPI's utility endpoints), so a task we give up on
  runs to its end upstream.

This module only describes the task (`FluxTask`); `transport.run_job` submits it, polls, retries
transient poll answers, keeps the deadline and downloads the sample.

Which body fields carry the layout (`width + height` or `aspect_ratio`) and each option is read from
the request's wire plan (made from the catalog binding in `data/providers/bfl.json`), so the catalog
shown in GET /v1/models and the wire cannot drift apart.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ContentPolicyViolation,
    ImagegateError,
    NoImageGenerated,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
)
from ..imaging import ImageBytes
from ..params import NOT_SENT
from ..plugins import ProviderSpec, catalog_file, http_settings
from .base import (
    ProviderRequest,
    ProviderResult,
    merge_passthrough,
)
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

PROVIDER = "bfl"
READY = "Ready"
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed"})
TASK_LOST = "Task not found"
# Where BFL itself hands out polling URLs (api.bfl.ai, gateway.bfl.ai, api.eu.bfl.ai: LiteLLM checks the same).
BFL_DOMAIN = "bfl.ai"
TERMINAL = frozenset({READY, TASK_LOST, *MODERATED, *FAILED})
# Any other status ("Pending", "Reasoning", "Generating", one BFL adds later) means "not yet": the
# deadline bounds the wait, and a new progress status must not fail a task that is running.
# BFL's input image fields, in order: one per reference image (FLUX.2 takes 8, Kontext 1 officially).
IMAGE_FIELDS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
# Values a binding sends under a differently-meant field ("converted" options): FLUX.2 [pro] takes
# `disable_pup`, the negation of the `prompt_upsampling` the catalog (and Kontext) speak of.
CONVERSIONS: dict[str, Callable[[Any], Any]] = {"disable_pup": lambda value: not value}


# --- request ---------------------------------------------------------------------------------


def layout_fields(request: ProviderRequest) -> dict[str, Any]:
    """The layout where the plan says this endpoint takes it: FLUX.2 `width + height` (the clamped
    pixels say everything ratio and tier would), Kontext `aspect_ratio` (it picks the pixels)."""
    paths = set(request.plan.paths("size"))
    if {"width", "height"} <= paths:
        return {"width": request.layout.width, "height": request.layout.height}
    if "aspect_ratio" in paths:
        return {"aspect_ratio": request.layout.aspect_ratio}
    return {}


def image_fields(request: ProviderRequest) -> dict[str, str]:
    """Input images as plain base64 under input_image, input_image_2, ... (the API takes base64 or
    a URL; the gateway has the bytes already). The mask is never sent: the gateway composites."""
    if request.plan.handling("image") in NOT_SENT:
        return {}
    return {name: ImageBytes(image.data).b64 for name, image in zip(IMAGE_FIELDS, request.images, strict=False)}


def build_body(request: ProviderRequest) -> dict[str, Any]:
    """The submit body: the prompt, the layout, images, seed, format and options where the plan puts
    them (an option it does not mention keeps its own name; a converted one is converted), then
    pass-through fields (which may add upstream fields, never replace these)."""
    plan = request.plan
    body: dict[str, Any] = {**layout_fields(request), **image_fields(request)}
    for param, value in (("prompt", request.prompt), ("seed", request.seed), ("output_format", request.output_format)):
        plan.place(body, param, value, undeclared=param)
    for param, value in request.options.items():
        target = plan.target(param, undeclared=param)
        if target is not None and value is not None:
            plan.place(body, param, CONVERSIONS.get(target, _same)(value), undeclared=param)
    merge_passthrough(body, request.extra, reserved=[*plan.reserved(), *((name,) for name in IMAGE_FIELDS)])
    return body


def _same(value: Any) -> Any:
    return value


# --- answers ---------------------------------------------------------------------------------


def _bad_response(what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"{PROVIDER} sent {what}.")


@dataclass(frozen=True)
class Task:
    id: str
    polling_url: str


def submitted_task(data: Any) -> Task:
    """The submit answer: `id` and `polling_url`, both required (AsyncResponse in the OpenAPI)."""
    if not isinstance(data, dict):
        raise _bad_response("a submit answer that is not an object")
    task_id, polling_url = data.get("id"), data.get("polling_url")
    if not isinstance(task_id, str) or not task_id:
        raise _bad_response("a submit answer without an id")
    if not isinstance(polling_url, str) or not polling_url:
        raise _bad_response("a submit answer without a polling_url")
    return Task(task_id, polling_url)


def _registered_domain(host: str) -> str:
    """'api.eu.bfl.ai' -> 'bfl.ai'; an IP address or a one- or two-label host is its own domain."""
    labels = host.split(".")
    if len(labels) <= 2 or all(label.isdigit() for label in labels) or ":" in host:
        return host
    return ".".join(labels[-2:])


def check_polling_url(polling_url: str, base_url: str) -> None:
    """The key is sent with every poll, so the polling URL must stay with the upstream: http(s), within
    the base URL's registered domain (api.bfl.ai hands out e.g. gateway.bfl.ai) or BFL's own (a
    BFL_BASE_URL proxy in front of BFL passes BFL's polling URLs through), nowhere else."""
    url, base = urllib.parse.urlsplit(polling_url), urllib.parse.urlsplit(base_url)
    host = (url.hostname or "").lower()
    domains = {_registered_domain((base.hostname or "").lower()), BFL_DOMAIN}
    if url.scheme not in ("http", "https") or not any(host == d or host.endswith("." + d) for d in domains):
        raise _bad_response(
            f"a polling_url outside {' and '.join(sorted(domains))} (refused: the API key would go with it)"
        )


def task_status(data: Any) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise _bad_response("a poll answer without a status")
    status: str = data["status"]
    return status


def _details_text(data: dict[str, Any]) -> str:
    """What BFL says about a failure: `error` (endpoints.md), else `details` (moderation reasons live
    in details["Moderation Reasons"], as third-party clients read them)."""
    error, details = data.get("error"), data.get("details")
    if isinstance(details, dict) and isinstance(details.get("Moderation Reasons"), list):
        return ", ".join(upstream_text(reason, 200) for reason in details["Moderation Reasons"][:10])
    if error:
        return upstream_text(error)
    return upstream_text(details) if details else ""


def status_error(data: dict[str, Any]) -> ImagegateError:
    """A terminal status other than Ready as our error."""
    status, detail = data["status"], _details_text(data)
    suffix = f": {detail}" if detail else "."
    if status in MODERATED:
        what = "request" if status == "Request Moderated" else "generated image"
        return ContentPolicyViolation(f"{PROVIDER}'s moderation blocked the {what} ({status}){suffix}", param="prompt")
    if status == TASK_LOST:
        return UpstreamError(f"{PROVIDER} lost the task (Task not found){suffix}", code="upstream_task_not_found")
    return UpstreamError(f"The {PROVIDER} task failed ({status}){suffix}", code="upstream_request_failed")


def sample_url(data: dict[str, Any]) -> str:
    result = data.get("result")
    sample = result.get("sample") if isinstance(result, dict) else None
    if not isinstance(sample, str) or not sample:
        raise NoImageGenerated(f"{PROVIDER} said Ready without a result.sample.")
    if not sample.startswith(("http://", "https://")):
        raise _bad_response("a result.sample that is not an http(s) URL")
    return sample


def detail_message(data: Any, status: int) -> str:
    """FastAPI-style `{"detail": "..."}` or `{"detail": [{"loc", "msg"}]}` (HTTPValidationError)."""
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail[:20]:
            if not isinstance(item, dict):
                parts.append(upstream_text(item))
                continue
            loc = item.get("loc")
            where = ".".join(upstream_text(p, 100) for p in loc[:10]) if isinstance(loc, list) else ""
            message = upstream_text(item.get("msg") or "")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts) or f"HTTP {status}"
    return upstream_text(detail) if detail else f"HTTP {status}"


def http_error(response: UpstreamResponse) -> ImagegateError:
    """A non-2xx answer from a submit or a poll. A body that still names a terminal status (BFL
    answers "Task not found" with an error status) is that status. 402 is BFL's "insufficient
    credits": the operator's account, not the client's request, so handled like a rejected upstream
    key (a 502, not retried, another provider may serve); 429 ("too many active tasks", 24 at once
    for most endpoints) is capacity, 503 with Retry-After."""
    data = json_or_none(response.body)
    if isinstance(data, dict) and data.get("status") in TERMINAL - {READY}:
        return status_error(data)
    message = detail_message(data, response.status_code)
    if response.status_code == 402:
        error: ImagegateError = UpstreamAuthFailed(
            f"{PROVIDER} returned HTTP 402 (the account has insufficient credits): {message}",
            code="upstream_insufficient_credits",
        )
        error.upstream_status = 402
        return error
    return error_for_status(PROVIDER, response.status_code, message, retry_after=retry_after_seconds(response.headers))


# --- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FluxTask(PollingJob):
    """One task: submitted to the model's endpoint, polled at the polling_url it returns (never one
    built from the id), its sample downloaded by the transport without the key. No cancel: BFL has
    none, so a task given up on runs to its end upstream."""

    provider = PROVIDER
    base_url: str
    api_key: str
    request: ProviderRequest

    @property
    def _auth(self) -> dict[str, str]:
        return {"x-key": self.api_key}

    def submit(self, remaining: float) -> Call:
        url = f"{self.base_url}/v1/{self.request.upstream_model}"
        return Call("POST", url, self._auth, json=build_body(self.request))

    def submitted(self, response: UpstreamResponse) -> JobStatus:
        task = submitted_task(parse_json(PROVIDER, response.body))
        check_polling_url(task.polling_url, self.base_url)
        return JobStatus("pending", poll=Call("GET", task.polling_url, self._auth), job_id=task.id)

    def polled(self, response: UpstreamResponse) -> JobStatus:
        data = parse_json(PROVIDER, response.body)
        status = task_status(data)
        if status == READY:
            return JobStatus.done([sample_url(data)])
        if status in TERMINAL:
            return JobStatus.failed(status_error(data))
        return JobStatus("pending")

    def error(self, response: UpstreamResponse) -> ImagegateError:
        return http_error(response)


# --- the adapter -----------------------------------------------------------------------------


class BflProvider(PollingProvider):
    provider_id = PROVIDER
    key_env_var = "BFL_API_KEY"
    base_url_env_var = "BFL_BASE_URL"
    default_base_url = "https://api.bfl.ai"
    # Seconds between polls (BFL's docs poll every 0.5 s); tests shorten it.
    poll_interval: float = 0.5

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._run(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._run(request)

    async def _run(self, request: ProviderRequest) -> ProviderResult:
        return await self.run_polling(FluxTask(self.base_url, self.api_key, request))


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook (plugins.py): BFL_API_KEY turns it on; its models come with it."""
    register(
        ProviderSpec(
            id=PROVIDER,
            factory=BflProvider.from_context,
            settings=http_settings(BflProvider.key_env_var, BflProvider.base_url_env_var),
            catalog=catalog_file("imagegate", "data/providers/bfl.json"),
        )
    )
