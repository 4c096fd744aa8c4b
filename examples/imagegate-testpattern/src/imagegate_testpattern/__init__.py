"""imagegate-testpattern: an example imagegate provider plugin that needs no key and no network.

It is everything a plugin needs, in one module:

1. `register_providers(register)`, the hook imagegate calls once per process for every module in
   the `imagegate.providers` entry-point group (see this package's pyproject.toml);
2. a `ProviderSpec`: the provider id, the factory that builds the adapter, its settings as
   data, and the catalog data it brings (the `testpattern` model, catalog.json);
3. the adapter, an `ImageProvider`: it turns a `ProviderRequest` (already validated and
   normalized by the gateway: prompt, WxH, n, seed, input images, mask, native output format)
   into images. The gateway does everything else: parameters, sizes, `n` splitting, retries,
   format conversion, hosting, usage.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

from imagegate.errors import InvalidRequest
from imagegate.imaging import ImageBytes
from imagegate.plugins import ProviderContext, ProviderSpec, Setting, catalog_file
from imagegate.providers import ImageProvider, InputImage, ProviderImage, ProviderRequest, ProviderResult
from PIL import Image

from .patterns import MIMES, PATTERNS, draw, encoded, over

__all__ = ["TestPatternProvider", "register_providers"]

PROVIDER_ID = "testpattern"
# The one optional setting, to show settings as data: TESTPATTERN_EDIT_OPACITY (or
# [providers.testpattern] edit_opacity in the config file) sets how strongly an edit's pattern
# covers the input image. No setting is required, so the provider is on once installed.
SETTINGS = (Setting("edit_opacity", "TESTPATTERN_EDIT_OPACITY", default="0.5"),)


class TestPatternProvider(ImageProvider):
    """Draws test patterns at the requested size; edits draw them over the first input image."""

    provider_id = PROVIDER_ID
    key_env_var = ""  # none: nothing to enable

    def __init__(self, edit_opacity: float = 0.5) -> None:
        self.edit_opacity = edit_opacity

    @classmethod
    def from_context(cls, context: ProviderContext) -> TestPatternProvider:
        """The factory: what the operator set (or the defaults), checked once at start."""
        opacity = float(context.value("edit_opacity") or 0.5)
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"TESTPATTERN_EDIT_OPACITY must be between 0 and 1, not {opacity}")
        return cls(edit_opacity=opacity)

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await asyncio.to_thread(self._make, request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        if not request.images:
            raise InvalidRequest("An edit needs an image.", param="image")
        return await asyncio.to_thread(self._make, request)

    def _make(self, request: ProviderRequest) -> ProviderResult:
        """Pillow work, off the event loop: `n` images, image i drawn with seed + i."""
        fmt = request.output_format or "png"  # only formats the binding lists as native arrive here
        pattern = request.options.get("pattern")
        if pattern is not None and pattern not in PATTERNS:  # the catalog's `values` checked it already
            raise InvalidRequest(f"'pattern' must be one of {', '.join(PATTERNS)}.", param="pattern")
        base = _opened(request.images[0]) if request.images else None
        mask = _opened(request.mask)
        images = []
        for index in range(request.n):
            picture = draw(
                request.prompt,
                request.layout.width,
                request.layout.height,
                seed=(request.seed or 0) + index,
                pattern=pattern,
            )
            if base is not None:
                picture = over(base, picture, opacity=self.edit_opacity, mask=mask)
            data = encoded(picture, fmt, request.output_compression)
            images.append(ProviderImage(ImageBytes(data), MIMES[fmt]))
        return ProviderResult(images=images)


def _opened(image: InputImage | None) -> Image.Image | None:
    """An input the gateway already checked (format, size, pixel count), decoded."""
    if image is None:
        return None
    with Image.open(io.BytesIO(image.data)) as opened:
        opened.load()
        return opened.copy()


def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """The plugin hook, called once per process by imagegate."""
    register(
        ProviderSpec(
            id=PROVIDER_ID,
            factory=TestPatternProvider.from_context,
            settings=SETTINGS,
            catalog=catalog_file("imagegate_testpattern", "catalog.json"),
        )
    )
