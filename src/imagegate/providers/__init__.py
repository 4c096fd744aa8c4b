"""Provider adapters. Each module registers itself through the plugin hook (plugins.py), as
outside packages do; nothing here lists them.

The local engine (`local.py`) is not a plugin: it needs the `local` extra (torch, diffusers), so
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

__all__ = [
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
