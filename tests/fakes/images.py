"""Tiny, fast, deterministic test images (Pillow).

Solid colours compress to almost nothing, so even 4K images encode in a fraction of a second;
results are cached because fakes regenerate the same image for repeated prompts.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

from PIL import Image

Color = tuple[int, ...]  # (r, g, b) or (r, g, b, a)

_FORMAT_BY_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def color_for(text: str) -> tuple[int, int, int]:
    """Deterministic RGB colour for a text, so tests can predict what a fake returns."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return (digest[0], digest[1], digest[2])


@lru_cache(maxsize=64)
def _encode(fmt: str, width: int, height: int, color: Color, quality: int) -> bytes:
    mode = "RGBA" if len(color) == 4 else "RGB"
    if fmt == "JPEG" and mode == "RGBA":  # JPEG has no alpha
        mode, color = "RGB", color[:3]
    image = Image.new(mode, (width, height), color)
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, "PNG", compress_level=1)
    elif fmt == "JPEG":
        image.save(out, "JPEG", quality=quality)
    else:
        image.save(out, "WEBP", quality=quality, method=0, exact=True)
    return out.getvalue()


def solid_png(width: int, height: int, color: Color = (128, 128, 128)) -> bytes:
    """PNG of one colour; a 4-tuple colour gives an RGBA image."""
    return _encode("PNG", width, height, tuple(color), 0)


def solid_jpeg(width: int, height: int, color: Color = (128, 128, 128), quality: int = 90) -> bytes:
    """JPEG of one colour (alpha, if given, is dropped)."""
    return _encode("JPEG", width, height, tuple(color), quality)


def solid_webp(width: int, height: int, color: Color = (128, 128, 128), quality: int = 90) -> bytes:
    """WebP of one colour; a 4-tuple colour gives an image with alpha."""
    return _encode("WEBP", width, height, tuple(color), quality)


def solid_image(mime: str, width: int, height: int, color: Color, quality: int = 90) -> bytes:
    """Encode by mime type ("image/png" | "image/jpeg" | "image/webp")."""
    try:
        fmt = _FORMAT_BY_MIME[mime]
    except KeyError:
        raise ValueError(f"unsupported mime type {mime!r}") from None
    return _encode(fmt, width, height, tuple(color), quality if fmt != "PNG" else 0)


def detect_mime(data: bytes) -> str | None:
    """Mime type from the bytes themselves (what upstreams check), None if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Image.MIME.get(image.format or "")
    except Exception:  # noqa: BLE001 - anything unreadable is "not an image"
        return None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def pixel_at(data: bytes, x: int = 0, y: int = 0) -> tuple[int, ...]:
    """Decoded pixel value, e.g. to check which prompt/seed an image came from."""
    with Image.open(io.BytesIO(data)) as image:
        value = image.getpixel((x, y))
    return value if isinstance(value, tuple) else (value,)
