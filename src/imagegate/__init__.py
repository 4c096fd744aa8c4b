"""imagegate: a self-hostable, OpenAI-compatible gateway for image generation and editing.

The public API, for the two kinds of outside code (tests/test_public_api.py keeps it complete):

- a provider plugin (docs/plugins.md): the plugin API (`ProviderSpec`, `Setting`,
  `ProviderContext`, `http_settings`, `catalog_file`, `ENTRY_POINT_GROUP`), the adapter types
  (`ImageProvider`, `HttpProvider`, `ProviderRequest` and its `WirePlan`, `ProviderResult`,
  `ProviderImage`, `ImageBytes` and `decode_b64_image`, `InputImage`, `TokenSplit`,
  `merge_passthrough`) and the error classes it raises. The transport helpers an HTTP adapter
  calls are exported by `imagegate.providers`.
- an embedder: `Gateway(Settings(...))`, its `ImageService` and `ImageJob` / `ImagesOutcome`,
  the pipeline's events, and the catalog types.
"""

from __future__ import annotations

from .catalog import (
    BindingPrice,
    Catalog,
    ModelEntry,
    ParamHandlingSpec,
    ParamSpec,
    PixelLimits,
    Price,
    ProviderBinding,
    SizeEntry,
    load_builtin_catalog,
)
from .config import Settings
from .errors import (
    AuthenticationFailed,
    ConfigurationError,
    ContentPolicyViolation,
    ConversionBusy,
    EngineBusy,
    IdempotencyKeyReused,
    IdempotentResultsGone,
    ImagegateError,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    NoImageGenerated,
    NotFound,
    PayloadTooLarge,
    ProviderNotConfigured,
    RequestTimeout,
    ServerBusy,
    ServiceUnavailable,
    StorageFull,
    UnsupportedParameter,
    UpstreamAtCapacity,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .gateway import Gateway
from .imaging import ImageBytes, decode_b64_image
from .normalize import Adjustment, Layout, resolve_layout
from .params import WirePlan
from .plugins import ENTRY_POINT_GROUP, ProviderContext, ProviderSpec, Setting, catalog_file, http_settings
from .providers import (
    HttpProvider,
    ImageProvider,
    InputImage,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    TokenSplit,
    merge_passthrough,
)
from .service import EventListener, ImageJob, ImageService, ImageSource, ImagesOutcome, OutputImage, PipelineEvent

__version__ = "0.1.0"

__all__ = [
    "Adjustment",
    "AuthenticationFailed",
    "BindingPrice",
    "Catalog",
    "ConfigurationError",
    "ContentPolicyViolation",
    "ConversionBusy",
    "ENTRY_POINT_GROUP",
    "EngineBusy",
    "EventListener",
    "Gateway",
    "HttpProvider",
    "IdempotencyKeyReused",
    "IdempotentResultsGone",
    "ImageBytes",
    "ImageJob",
    "ImageProvider",
    "ImageService",
    "ImageSource",
    "ImagegateError",
    "ImagesOutcome",
    "InputImage",
    "InvalidImage",
    "InvalidRequest",
    "Layout",
    "ModelEntry",
    "ModelNotFound",
    "NoImageGenerated",
    "NotFound",
    "OutputImage",
    "ParamHandlingSpec",
    "ParamSpec",
    "PayloadTooLarge",
    "PipelineEvent",
    "PixelLimits",
    "Price",
    "ProviderBinding",
    "ProviderContext",
    "ProviderImage",
    "ProviderNotConfigured",
    "ProviderRequest",
    "ProviderResult",
    "ProviderSpec",
    "RequestTimeout",
    "ServerBusy",
    "ServiceUnavailable",
    "Setting",
    "Settings",
    "SizeEntry",
    "StorageFull",
    "TokenSplit",
    "UnsupportedParameter",
    "UpstreamAtCapacity",
    "UpstreamAuthFailed",
    "UpstreamBadResponse",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamRejectedRequest",
    "UpstreamResponseTooLarge",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WirePlan",
    "__version__",
    "catalog_file",
    "decode_b64_image",
    "http_settings",
    "load_builtin_catalog",
    "merge_passthrough",
    "resolve_layout",
]
