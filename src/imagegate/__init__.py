"""imagegate: a self-hostable, OpenAI-compatible gateway for image generation and editing."""

from __future__ import annotations

from .catalog import Catalog, ModelEntry, load_builtin_catalog
from .config import Settings
from .errors import ImagegateError
from .gateway import Gateway
from .normalize import Layout, resolve_layout
from .service import ImageJob, ImageService

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "Gateway",
    "ImageJob",
    "ImageService",
    "ImagegateError",
    "Layout",
    "ModelEntry",
    "Settings",
    "__version__",
    "load_builtin_catalog",
    "resolve_layout",
]
