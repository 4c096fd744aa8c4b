"""Provider adapters. A new upstream is one module here plus one line in PROVIDER_CLASSES."""

from __future__ import annotations

from .base import ImageProvider, InputImage, ProviderImage, ProviderRequest, ProviderResult
from .gemini import GeminiProvider
from .openai import OpenAIProvider

PROVIDER_CLASSES: dict[str, type[ImageProvider]] = {
    GeminiProvider.provider_id: GeminiProvider,
    OpenAIProvider.provider_id: OpenAIProvider,
}

__all__ = [
    "PROVIDER_CLASSES",
    "GeminiProvider",
    "ImageProvider",
    "InputImage",
    "OpenAIProvider",
    "ProviderImage",
    "ProviderRequest",
    "ProviderResult",
]
