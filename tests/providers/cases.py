"""One `ProviderCase` per upstream provider: what the contract test (test_contract.py) needs to know.

A case says which fake upstream serves it (the name of a pytest fixture), which setting values
build its adapter (through the plugin registry's factory, as the gateway builds it), which catalog
model it serves, and how to script each shared situation in THAT upstream's own wire format
(a Google error body with RetryInfo, an RFC 7807 problem, fal's `detail` list, an OpenAI error
object...). The contract test runs every situation over every case; what is specific to one
upstream (its field mapping, its quirks) stays in its own `test_<provider>.py`.

A situation an upstream genuinely cannot have is said here, with its reason (`no_cancel`), and
the contract test asserts the documented alternative instead: no silent skips.
"""

from __future__ import annotations

import base64
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from imagegate.config import FileConfig
from imagegate.gateway import build_catalog
from imagegate.normalize import Layout
from imagegate.providers.transport import decode_data_uri
from tests.fakes.bfl import BflError, FakeBfl, Moderated, Stuck
from tests.fakes.common import Hang, MalformedJSON, RawResponse, RecordedRequest
from tests.fakes.fal import ContentPolicy, FakeFal, FalError, StuckInQueue
from tests.fakes.gemini import FakeGemini, GeminiError, PromptBlocked
from tests.fakes.openai_upstream import FakeOpenAI, OpenAIError
from tests.fakes.replicate import SAFETY_ERROR, FakeReplicate, PredictionFails, PredictionStuck, ReplicateError
from tests.fakes.vertex import FakeGoogleOAuth, FakeVertex

# The gateway's catalog: built-in models plus what the provider plugins bring (vertex's bindings).
CATALOG = build_catalog(FileConfig())
HTML_PAGE = "<html><head><title>Error</title></head><body><h1>Bad Gateway</h1></body></html>"


@dataclass
class VertexUpstream:
    """Vertex needs two fakes: its token endpoint (the key file's `token_uri`) and Vertex itself.
    `key_file` holds an account the token endpoint knows; `stranger_file` one it does not."""

    oauth: FakeGoogleOAuth
    vertex: FakeVertex
    key_file: Path
    stranger_file: Path
    project: str

    def reset(self) -> None:
        self.oauth.reset()
        self.vertex.reset()


class ProviderCase(ABC):
    """One provider, as the contract test drives it. `upstream` is what the case's fixture gives."""

    id: ClassVar[str]  # the provider id (its plugin registry entry)
    fixture: ClassVar[str]  # the pytest fixture that gives its (reset) fake upstream
    model_id: ClassVar[str]  # a catalog model it serves, in both modes
    polling: ClassVar[bool] = False  # works by jobs: submit, poll, fetch the outputs
    # Why a pending job cannot be cancelled upstream (None: it can, and the runner must).
    no_cancel: ClassVar[str | None] = None
    # Why the model takes no seed at all (None: it does; a provider may still lack it, see the plan).
    no_seed: ClassVar[str | None] = None
    # Request fields for a non-default layout, in what the model takes.
    layout_fields: ClassVar[dict[str, Any]] = {"aspect_ratio": "16:9", "resolution": "2K"}
    # A provider-handled option the binding sends (to see that building does not mutate it).
    option_fields: ClassVar[dict[str, Any]] = {}
    # The upstream's own words for a situation ("rejected_key", "rate_limited", "rejects_input",
    # "server_error"), as our error message must carry them.
    words: ClassVar[dict[str, str]]
    # An upstream model id the catalog does not know, in the shape the upstream's URL takes.
    probe_model: ClassVar[str] = "contract-probe-model"

    # --- the adapter's settings -----------------------------------------------------------

    @abstractmethod
    def settings(self, upstream: Any) -> dict[str, str]:
        """The plugin's setting values that point the adapter at the fake."""

    def rejected_key_settings(self, upstream: Any) -> dict[str, str]:
        """Settings whose credential the upstream refuses."""
        return {**self.settings(upstream), "api_key": "wrong-key"}

    def base_url(self, upstream: Any) -> str:
        return self.settings(upstream)["base_url"]

    # --- the fake -------------------------------------------------------------------------

    def fake(self, upstream: Any) -> Any:
        """The fake that serves the image calls (the one scripted behaviours go to)."""
        return upstream

    def enqueue(self, upstream: Any, *behaviours: Any) -> None:
        self.fake(upstream).enqueue(*behaviours)

    def calls(self, upstream: Any) -> list[RecordedRequest]:
        """The calls that ask for images (a submit, a generateContent), not polls or downloads."""
        return list(self.fake(upstream).requests)

    def requests(self, upstream: Any) -> list[RecordedRequest]:
        """Everything the upstream received."""
        return list(self.fake(upstream).requests)

    def cancels(self, upstream: Any) -> int:
        """Cancels the upstream received for its jobs."""
        return 0

    def disconnects(self, upstream: Any) -> int:
        """Requests whose client went away while the fake was still answering."""
        return int(self.fake(upstream).cancelled)

    def upstream_model_on_wire(self, recorded: RecordedRequest) -> str | None:
        """Which upstream model the call asked for (its path or its body names it)."""
        return recorded.model

    # --- scripted situations, in the upstream's own wire format ---------------------------

    @abstractmethod
    def rate_limited(self, seconds: float) -> Any:
        """A 429 that says when to come back."""

    @abstractmethod
    def overloaded(self) -> Any:
        """A 503: the upstream is busy."""

    @abstractmethod
    def server_error(self) -> Any:
        """A 500."""

    @abstractmethod
    def rejects_input(self) -> Any:
        """The upstream refuses the request's content (its 400 / 422)."""

    @abstractmethod
    def content_policy(self) -> Any:
        """The upstream's safety system refuses the request."""

    def malformed_json(self) -> Any:
        return MalformedJSON()

    def html_page(self, status: int, headers: dict[str, str] | None = None) -> Any:
        """An HTML error page, as a proxy in front of the upstream sends one."""
        return RawResponse(status, HTML_PAGE, headers=headers)

    def hang(self, seconds: float) -> Any:
        """The first call does not answer for `seconds`."""
        return Hang(seconds)

    def stuck(self) -> Any:
        """A job that never finishes (polling upstreams); a hang for one-call upstreams."""
        return Hang(3600)

    # --- what reached the wire ------------------------------------------------------------

    @abstractmethod
    def size_on_wire(self, layout: Layout) -> dict[str, Any]:
        """The value at each path the plan sends `size` to, in the upstream's spelling."""


class GoogleCase(ProviderCase):
    """What the Gemini API and Vertex AI share: the generateContent body, answers and error bodies."""

    model_id = "gemini-3-pro-image-preview"
    words = {
        "rejected_key": "PERMISSION_DENIED API key not valid",
        "rate_limited": "RESOURCE_EXHAUSTED You exceeded your current quota.",
        "rejects_input": "INVALID_ARGUMENT Request contains an invalid argument.",
        "server_error": "INTERNAL An internal error has occurred.",
    }
    option_fields = {"enable_web_search": True}

    def rate_limited(self, seconds: float) -> Any:
        # Google puts the back-off hint in a RetryInfo detail, not in a header (fakes/gemini.py).
        return GeminiError(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", retry_after_s=seconds)

    def overloaded(self) -> Any:
        return GeminiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")

    def server_error(self) -> Any:
        return GeminiError(500, "INTERNAL", "An internal error has occurred.")

    def rejects_input(self) -> Any:
        return GeminiError(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")

    def content_policy(self) -> Any:
        return PromptBlocked("PROHIBITED_CONTENT", "The prompt is not allowed.")

    def size_on_wire(self, layout: Layout) -> dict[str, Any]:
        return {"generationConfig.imageConfig": {"aspectRatio": layout.aspect_ratio, "imageSize": layout.resolution}}


class GeminiCase(GoogleCase):
    id = "gemini"
    fixture = "fake_gemini"

    def settings(self, upstream: FakeGemini) -> dict[str, str]:
        return {"api_key": upstream.api_key, "base_url": upstream.base_url}


class VertexCase(GoogleCase):
    """Gemini's body and answers over Vertex's URL, with an OAuth token from the key file."""

    id = "vertex"
    fixture = "vertex_upstream"
    words = {**GoogleCase.words, "rejected_key": "Invalid grant: account not found"}  # the token endpoint's

    def settings(self, upstream: VertexUpstream) -> dict[str, str]:
        return {
            "project": upstream.project,
            "location": "global",
            "base_url": upstream.vertex.base_url,
            "credentials_file": str(upstream.key_file),
        }

    def rejected_key_settings(self, upstream: VertexUpstream) -> dict[str, str]:
        # The key file is Vertex's credential: one the token endpoint does not know is refused there.
        return {**self.settings(upstream), "credentials_file": str(upstream.stranger_file)}

    def fake(self, upstream: VertexUpstream) -> FakeVertex:
        return upstream.vertex

    def requests(self, upstream: VertexUpstream) -> list[RecordedRequest]:
        return [*upstream.oauth.requests, *upstream.vertex.requests]


class ReplicateCase(ProviderCase):
    id = "replicate"
    fixture = "fake_replicate"
    model_id = "gemini-3-pro-image-preview"
    polling = True
    words = {
        "rejected_key": "Unauthenticated: You did not pass a valid authentication token",
        "rate_limited": "Request was throttled.",
        "rejects_input": "Input validation failed: - input.prompt: prompt is too long",
        "server_error": "Internal Server Error: Something went wrong",
    }
    option_fields = {"safety_filter_level": "block_only_high"}
    probe_model = "contract/probe-model"  # Replicate's URL takes owner/name

    def settings(self, upstream: FakeReplicate) -> dict[str, str]:
        return {"api_key": upstream.api_key, "base_url": upstream.base_url}

    def calls(self, upstream: FakeReplicate) -> list[RecordedRequest]:
        return upstream.creates

    def cancels(self, upstream: FakeReplicate) -> int:
        return upstream.cancels

    def rate_limited(self, seconds: float) -> Any:
        return ReplicateError(
            429, f"Request was throttled. Your rate limit resets in ~{seconds:g}s.", retry_after_s=seconds
        )

    def overloaded(self) -> Any:
        return ReplicateError(503, "Service Unavailable", title="Service Unavailable")

    def server_error(self) -> Any:
        return ReplicateError(500, "Something went wrong", title="Internal Server Error")

    def rejects_input(self) -> Any:
        return ReplicateError(422, "- input.prompt: prompt is too long", title="Input validation failed")

    def content_policy(self) -> Any:
        # A prediction carries only an error string: the safety failure is told by its wording (E005).
        return PredictionFails(SAFETY_ERROR)

    def stuck(self) -> Any:
        return PredictionStuck()

    def size_on_wire(self, layout: Layout) -> dict[str, Any]:
        return {"input.aspect_ratio": layout.aspect_ratio, "input.resolution": layout.resolution}


class FalCase(ProviderCase):
    id = "fal"
    fixture = "fake_fal"
    model_id = "gemini-3-pro-image-preview"
    polling = True
    words = {
        "rejected_key": "Unauthorized",
        "rate_limited": "Too many requests",
        "rejects_input": "body.prompt: ensure this value has at most 50000 characters",
        "server_error": "Internal Server Error",
    }
    option_fields = {"safety_tolerance": 3}  # an integer here, a string enum on fal's wire
    probe_model = "contract/probe-model"  # fal's endpoint ids are owner/alias

    def settings(self, upstream: FakeFal) -> dict[str, str]:
        return {"api_key": upstream.api_key, "base_url": upstream.base_url}

    def calls(self, upstream: FakeFal) -> list[RecordedRequest]:
        return upstream.submits

    def cancels(self, upstream: FakeFal) -> int:
        return upstream.cancels

    def rate_limited(self, seconds: float) -> Any:
        return FalError(429, "Too many requests", retry_after_s=seconds)

    def overloaded(self) -> Any:
        return FalError(503, "Service temporarily unavailable")

    def server_error(self) -> Any:
        return FalError(500, "Internal Server Error")

    def rejects_input(self) -> Any:
        return FalError(
            422,
            [
                {
                    "loc": ["body", "prompt"],
                    "msg": "ensure this value has at most 50000 characters",
                    "type": "value_error.any_str.max_length",
                }
            ],
        )

    def content_policy(self) -> Any:
        return ContentPolicy()

    def stuck(self) -> Any:
        return StuckInQueue()

    def size_on_wire(self, layout: Layout) -> dict[str, Any]:
        return {"aspect_ratio": layout.aspect_ratio, "resolution": layout.resolution}


class OpenAICase(ProviderCase):
    """OpenAI's current GPT image models, with the fake refusing what the real API refuses per model."""

    id = "openai"
    fixture = "fake_openai_gpt"
    model_id = "gpt-image-1.5"
    no_seed = "OpenAI's Images API has no seed parameter (the spec, section 1; the catalog's gpt-image-1.5)"
    layout_fields = {"size": "1536x1024"}
    words = {
        "rejected_key": "Incorrect API key provided",
        "rate_limited": "Rate limit reached for images per minute.",
        "rejects_input": "Invalid value: 'auto'. Supported values are",
        "server_error": "The server had an error while processing your request.",
    }
    option_fields = {"quality": "high"}

    def settings(self, upstream: FakeOpenAI) -> dict[str, str]:
        return {"api_key": upstream.api_key, "base_url": upstream.base_url}

    def rate_limited(self, seconds: float) -> Any:
        return OpenAIError(
            429,
            "Rate limit reached for images per minute.",
            type="requests",
            code="rate_limit_exceeded",
            retry_after_s=seconds,
        )

    def overloaded(self) -> Any:
        return OpenAIError(503, "The engine is currently overloaded, please try again later.", type="server_error")

    def server_error(self) -> Any:
        return OpenAIError(500, "The server had an error while processing your request.", type="server_error")

    def rejects_input(self) -> Any:
        return OpenAIError(
            400,
            "Invalid value: 'auto'. Supported values are: 'low', 'medium' and 'high'.",
            code="invalid_value",
            param="quality",
        )

    def content_policy(self) -> Any:
        return OpenAIError(
            400,
            "Your request was rejected as a result of our safety system.",
            type="image_generation_user_error",
            code="moderation_blocked",
        )

    def size_on_wire(self, layout: Layout) -> dict[str, Any]:
        return {"size": f"{layout.width}x{layout.height}"}


class BflCase(ProviderCase):
    """Black Forest Labs: a task submitted, then polled at the polling_url it returns."""

    id = "bfl"
    fixture = "fake_bfl"
    model_id = "flux-2-pro"
    polling = True
    no_cancel = "BFL has no cancel endpoint (providers/bfl.py): a task given up on runs to its end upstream"
    words = {
        "rejected_key": "Invalid API key",
        "rate_limited": "Too many active tasks",
        "rejects_input": "prompt: String should have at most 32000 characters",
        "server_error": "Internal Server Error",
    }
    option_fields = {"safety_tolerance": 4, "prompt_upsampling": False}  # sent as disable_pup: True
    probe_model = "flux-2-max"  # an endpoint BFL (and its fake) serves that no catalog binding calls

    def settings(self, upstream: FakeBfl) -> dict[str, str]:
        return {"api_key": upstream.api_key, "base_url": upstream.base_url}

    def calls(self, upstream: FakeBfl) -> list[RecordedRequest]:
        return upstream.submits

    def rate_limited(self, seconds: float) -> Any:
        return BflError(429, "Too many active tasks", retry_after_s=seconds)

    def overloaded(self) -> Any:
        return BflError(503, "Service temporarily unavailable")

    def server_error(self) -> Any:
        return BflError(500, "Internal Server Error")

    def rejects_input(self) -> Any:
        return BflError(422, "prompt: String should have at most 32000 characters")

    def content_policy(self) -> Any:
        return Moderated("Request Moderated", ("Prompt Filter",))

    def stuck(self) -> Any:
        return Stuck()

    def size_on_wire(self, layout: Layout) -> dict[str, Any]:
        return {"width": layout.width, "height": layout.height}


CASES: tuple[ProviderCase, ...] = (GeminiCase(), VertexCase(), ReplicateCase(), FalCase(), OpenAICase(), BflCase())


# --- reading the wire -------------------------------------------------------------------------


def lookup(node: Any, path: str) -> list[Any]:
    """Values at a declared path: 'a.b', 'a[0].b', 'a.parts[].inline_data' ([] = every element)."""
    nodes = [node]
    for token in re.findall(r"\[\d*\]|[^.\[\]]+", path):
        found: list[Any] = []
        for current in nodes:
            if token == "[]":
                found.extend(current if isinstance(current, list) else [])
            elif token.startswith("["):
                index = int(token[1:-1])
                if isinstance(current, list) and index < len(current):
                    found.append(current[index])
            elif isinstance(current, dict) and token in current:
                found.append(current[token])
        nodes = found
    return nodes


def leaves(node: Any) -> list[Any]:
    """Every scalar anywhere in a JSON value."""
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in leaves(value)]
    return [node]


def body_of(recorded: RecordedRequest) -> dict[str, Any]:
    """A call's body: its JSON, or its multipart text fields (the last value of each)."""
    if recorded.json is not None:
        assert isinstance(recorded.json, dict)
        return recorded.json
    return dict(recorded.form or {})


def wire_of(recorded: RecordedRequest) -> tuple[Any, ...]:
    """All a call sent, comparable across two calls (multipart boundaries aside)."""
    files = [(part.field_name, part.content_type, part.data) for part in recorded.files or []]
    return recorded.path, recorded.json, recorded.form_items, files


def images_at(recorded: RecordedRequest, paths: tuple[str, ...]) -> list[bytes]:
    """The input images a call carries at `paths`, in order: multipart file parts of that name, or
    JSON values there (a data URI, plain base64, or Google's `{mime_type, data}` inline blob)."""
    if recorded.files is not None:
        return [part.data for part in recorded.files if part.field_name in paths]
    found: list[bytes] = []
    for path in paths:
        for value in lookup(recorded.json, path):
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    found.append(base64.b64decode(item["data"]))
                else:
                    found.append(decode_data_uri(item) if item.startswith("data:") else base64.b64decode(item))
    return found
