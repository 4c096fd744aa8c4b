"""Provider adapters. A new upstream is one module here plus one line in PROVIDER_CLASSES."""

from __future__ import annotations

from .base import ImageProvider, InputImage, ProviderImage, ProviderRequest, ProviderResult
from .fal import FalProvider
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .replicate import ReplicateProvider

PROVIDER_CLASSES: dict[str, type[ImageProvider]] = {
    GeminiProvider.provider_id: GeminiProvider,
    ReplicateProvider.provider_id: ReplicateProvider,
    FalProvider.provider_id: FalProvider,
    OpenAIProvider.provider_id: OpenAIProvider,
}

__all__ = [
    "PROVIDER_CLASSES",
    "FalProvider",
    "GeminiProvider",
    "ImageProvider",
    "InputImage",
    "OpenAIProvider",
    "ProviderImage",
    "ProviderRequest",
    "ProviderResult",
    "ReplicateProvider",
]
