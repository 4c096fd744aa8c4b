"""Provider adapters. Each module registers itself through the plugin hook (plugins.py), as
outside packages do; nothing here lists them.

This package is also what an adapter imports (docs/plugins.md): the interface (`base.py`), the
image bytes it returns (`ImageBytes`), and the transport every upstream call goes through
(`transport.py`: sending under caps and timeouts, the polling job runner, downloads, data URIs).

The local engine (`local.py`) is not a plugin: it needs the `local` extra (torch, diffusers), so
the gateway imports it only when a local model is configured.
"""

from __future__ import annotations

from ..imaging import ImageBytes, decode_b64_image
from .base import (
    HttpProvider,
    ImageProvider,
    InputImage,
    PartialListener,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    TokenSplit,
    merge_passthrough,
    token_count,
)
from .bfl import BflProvider
from .fal import FalProvider
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .replicate import ReplicateProvider
from .transport import (
    Call,
    JobStatus,
    PollingJob,
    UpstreamResponse,
    decode_data_uri,
    download_image,
    error_for_status,
    image_from_bytes,
    json_or_none,
    parse_json,
    retry_after_seconds,
    run_job,
    send,
    send_checked,
    upstream_text,
)
from .vertex import VertexProvider

__all__ = [
    "BflProvider",
    "Call",
    "FalProvider",
    "GeminiProvider",
    "HttpProvider",
    "ImageBytes",
    "ImageProvider",
    "InputImage",
    "JobStatus",
    "OpenAIProvider",
    "PartialListener",
    "PollingJob",
    "ProviderImage",
    "ProviderRequest",
    "ProviderResult",
    "ReplicateProvider",
    "TokenSplit",
    "UpstreamResponse",
    "VertexProvider",
    "decode_b64_image",
    "decode_data_uri",
    "download_image",
    "error_for_status",
    "image_from_bytes",
    "json_or_none",
    "merge_passthrough",
    "parse_json",
    "retry_after_seconds",
    "run_job",
    "send",
    "send_checked",
    "token_count",
    "upstream_text",
]
