"""Provider adapters. A new upstream is one module here plus one line in PROVIDER_CLASSES.

The local engine (`local.py`) is not listed: it needs the `local` extra (torch, diffusers), so
the gateway imports it only when a local model is configured.
"""

from __future__ import annotations

from .base import (
    HttpProvider,
    ImageProvider,
    InputImage,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    TokenSplit,
)
from .fal import FalProvider
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .replicate import ReplicateProvider

PROVIDER_CLASSES: dict[str, type[HttpProvider]] = {
    GeminiProvider.provider_id: GeminiProvider,
    ReplicateProvider.provider_id: ReplicateProvider,
    FalProvider.provider_id: FalProvider,
    OpenAIProvider.provider_id: OpenAIProvider,
}

__all__ = [
    "PROVIDER_CLASSES",
    "FalProvider",
    "GeminiProvider",
    "HttpProvider",
    "ImageProvider",
    "InputImage",
    "OpenAIProvider",
    "ProviderImage",
    "ProviderRequest",
    "ProviderResult",
    "ReplicateProvider",
    "TokenSplit",
]
