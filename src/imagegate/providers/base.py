"""The small provider interface: what every upstream adapter takes and gives back.

An adapter turns one `ProviderRequest` (already normalized by the gateway) into its upstream's
wire call and the answer back into `ProviderImage`s. It raises only `imagegate.errors`.
The gateway, not the adapter, does `n` splitting, output formats, hosting and usage.
What goes where on the wire comes from the request's `plan` (params.WirePlan, made from the
catalog binding by params.provider_view): adapters never consult the catalog themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar, Self

import httpx

from ..catalog import ProviderBinding
from ..errors import InvalidRequest
from ..imaging import ImageBytes
from ..normalize import Layout
from ..params import WirePlan
from ..plugins import ProviderContext, ProviderSpec, http_settings


@dataclass(frozen=True)
class InputImage:
    data: bytes
    mime_type: str
    width: int
    height: int

    def data_uri(self) -> str:
        """Replicate and fal take `data:` URIs wherever they take an image URL: no upload step."""
        return f"data:{self.mime_type};base64,{ImageBytes(self.data).b64}"


@dataclass(frozen=True)
class ProviderRequest:
    """One upstream call's worth of work. `options` holds the recognized, provider-handled
    parameters (e.g. `enable_web_search`) and `extra` the unrecognized ones, passed through.
    `plan` says where each value goes; given a `binding` instead (tests, one-off callers), the
    plan is made from it."""

    mode: str  # "t2i" or "edit"
    prompt: str
    layout: Layout
    plan: WirePlan = None  # type: ignore[assignment]  # made from `binding` when not given
    binding: InitVar[ProviderBinding | None] = None
    n: int = 1
    seed: int | None = None
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    output_format: str | None = None  # only set when the upstream can produce it natively
    output_compression: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Set when the client streams with partial images and the binding declares `partial_images`
    # (an upstream that sends interim images, as Gemini's thought images): the adapter calls it
    # with each interim image as it arrives, before returning its result. Others never see it.
    on_partial: PartialListener | None = field(default=None, compare=False)
    # How many interim images the client asked for (its `partial_images`), for an upstream that
    # takes the count itself (OpenAI's stream); set with `on_partial`, else 0.
    partial_images: int = 0

    def __post_init__(self, binding: ProviderBinding | None) -> None:
        if binding is not None:
            object.__setattr__(self, "plan", WirePlan.from_binding(binding))
        if self.plan is None:
            raise TypeError("a ProviderRequest needs a plan (or a binding to make one from)")

    @property
    def upstream_model(self) -> str:
        """The upstream model id for this request's mode."""
        return self.plan.upstream_for(self.mode)


# Called on the event loop with one interim image; it must not block.
PartialListener = Callable[["ProviderImage"], None]


@dataclass(frozen=True)
class ProviderImage:
    blob: ImageBytes
    mime_type: str
    revised_prompt: str | None = None  # text the model returned with this image

    @property
    def data(self) -> bytes:
        return self.blob.data


# --- pass-through ----------------------------------------------------------------------------
#
# Unknown request fields are merged into the upstream body the adapter built, but they may only
# ADD fields: a field the gateway set (or could set from a request parameter, per the plan's
# `reserved()` paths, the binding's `to` targets) is the gateway's, because it is what the response reports and usage bills.
# Dicts the gateway built are containers: a new key inside one is an addition, so
# `generationConfig.temperature` passes while `generationConfig.imageConfig` (a binding target)
# does not.

KeyFold = Callable[[str], str]
_LEAF: dict[str, Any] = {}  # marks a reserved path's end in the shadow tree (compared by identity)


def same_key(key: str) -> str:
    return key


def _shadow(reserved: Iterable[tuple[str, ...]], fold: KeyFold) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in reserved:
        node = tree
        for depth, key in enumerate(path):
            child = node.get(fold(key))
            if child is _LEAF:
                break  # a shorter reserved path already covers this one
            if depth == len(path) - 1:
                node[fold(key)] = _LEAF
            else:
                node = node.setdefault(fold(key), {})
    return tree


def merge_passthrough(
    body: dict[str, Any], extra: dict[str, Any], *, reserved: Iterable[tuple[str, ...]] = (), fold: KeyFold = same_key
) -> None:
    """Merge unknown request fields into `body`, refusing (400, naming the top-level field) any
    that would replace a value the gateway built or a `reserved` path. `fold` maps a key to the
    upstream's notion of "the same field" (Gemini's proto-JSON: image_size == imageSize)."""
    shadow = _shadow(reserved, fold)
    for key, value in extra.items():
        _merge_field(body, shadow, key, value, (key,), fold)


def _merge_field(
    node: dict[str, Any], shadow: dict[str, Any] | None, key: str, value: Any, path: tuple[str, ...], fold: KeyFold
) -> None:
    folded = fold(key)
    existing_key = next((k for k in node if fold(k) == folded), None)
    sub_shadow = shadow.get(folded) if shadow is not None else None
    if existing_key is None and sub_shadow is None:
        node[key] = value  # a new field: what pass-through is for
        return
    existing = node.get(existing_key) if existing_key is not None else {}
    if sub_shadow is _LEAF or not isinstance(value, dict) or not isinstance(existing, dict):
        dotted = ".".join(path)
        raise InvalidRequest(
            f"Pass-through parameter '{dotted}' would replace a field the gateway sets from the request's "
            "own parameters; unknown parameters may only add upstream fields.",
            param=path[0],
            code="reserved_upstream_field",
        )
    if existing_key is None:
        node[key] = existing
    for sub_key, sub_value in value.items():
        _merge_field(existing, sub_shadow, sub_key, sub_value, (*path, sub_key), fold)


# No real request counts more tokens; a bigger figure is garbage (and would overflow SQLite).
MAX_TOKEN_COUNT = 10**12


def token_count(value: Any) -> int:
    """A usage figure from an upstream, or 0 when it is missing or garbled (never worth a 500)."""
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return count if 0 <= count <= MAX_TOKEN_COUNT else 0


@dataclass(frozen=True)
class TokenSplit:
    """Tokens by modality, as OpenAI's usage `input_tokens_details` / `output_tokens_details`."""

    text_tokens: int = 0
    image_tokens: int = 0

    def __add__(self, other: TokenSplit) -> TokenSplit:
        return TokenSplit(self.text_tokens + other.text_tokens, self.image_tokens + other.image_tokens)


@dataclass
class ProviderResult:
    images: list[ProviderImage]
    text: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    # The upstream's split by modality, when it gives one (Gemini's *TokensDetails, OpenAI's
    # *_tokens_details); None when it does not.
    input_details: TokenSplit | None = None
    output_details: TokenSplit | None = None

    def input_split(self) -> TokenSplit:
        """The upstream's split, else all input counted as text (a prompt is text; what images
        cost is unknown)."""
        return self.input_details or TokenSplit(text_tokens=self.input_tokens)

    def output_split(self) -> TokenSplit:
        """The upstream's split, else all output counted as image tokens (these calls make images)."""
        return self.output_details or TokenSplit(image_tokens=self.output_tokens)


class ImageProvider(ABC):
    """One way of making images: an upstream service, or the local engine."""

    provider_id: ClassVar[str]

    @abstractmethod
    async def generate(self, request: ProviderRequest) -> ProviderResult: ...

    @abstractmethod
    async def edit(self, request: ProviderRequest) -> ProviderResult: ...

    async def run(self, request: ProviderRequest) -> ProviderResult:
        if request.mode == "edit":
            return await self.edit(request)
        return await self.generate(request)

    async def start(self) -> None:
        """Called once when the server starts (the local engine loads its weights here)."""
        return None

    async def aclose(self) -> None:
        """Release what the provider holds of its own (the shared HTTP client is not its own)."""
        return None

    def queued_images(self) -> int | None:
        """Images waiting in a queue of the provider's own (the local engine's), for /metrics;
        None: it has none (an upstream's queue is the upstream's)."""
        return None


class HttpProvider(ImageProvider):
    """An upstream service over HTTP. Instances are long-lived and share one httpx client."""

    # The variables of its key and base URL (`provider_spec` declares them as its settings).
    key_env_var: ClassVar[str]
    base_url_env_var: ClassVar[str]
    default_base_url: ClassVar[str]
    # Per upstream call; the gateway sets both from its settings.
    timeout: float = 300.0
    max_response_bytes: int = 256 * 1024 * 1024

    def __init__(self, *, api_key: str, base_url: str, client: httpx.AsyncClient) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.client = client

    @classmethod
    def from_context(cls, context: ProviderContext) -> Self:
        """The adapter a plugin's factory builds from its settings (see plugins.py)."""
        provider = cls(
            api_key=context.value("api_key") or "",
            client=context.client,
            base_url=context.value("base_url") or cls.default_base_url,
        )
        provider.timeout = context.timeout
        provider.max_response_bytes = context.max_response_bytes
        if context.poll_interval is not None and hasattr(provider, "poll_interval"):
            provider.poll_interval = context.poll_interval
        return provider

    @classmethod
    def provider_spec(cls) -> ProviderSpec:
        """The usual registration: a key and a base URL variable, no catalog data of its own."""
        return ProviderSpec(
            id=cls.provider_id, factory=cls.from_context, settings=http_settings(cls.key_env_var, cls.base_url_env_var)
        )
