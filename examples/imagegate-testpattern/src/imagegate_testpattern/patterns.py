"""Test patterns drawn with Pillow: pure functions, no I/O.

The prompt's hash picks the palette (and the pattern when none is asked for); the seed varies
the picture (which colour comes first, the gradient's direction, the grid's cell size), so one
prompt and seed always give the same image, and image i of n (seed + i) differs from the others.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageDraw

PATTERNS = ("bars", "gradient", "grid")
# What the catalog binding lists as native_output_formats: the gateway converts to the others.
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
Color = tuple[int, int, int]


def _digest(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode("utf-8")).digest()


def palette_for(prompt: str, colors: int = 7) -> list[Color]:
    """`colors` RGB colours taken from the prompt's SHA-256 (seven, as in SMPTE bars)."""
    digest = _digest(prompt)
    return [(digest[3 * i], digest[3 * i + 1], digest[3 * i + 2]) for i in range(colors)]


def pattern_for(prompt: str) -> str:
    return PATTERNS[_digest(prompt)[31] % len(PATTERNS)]


def _bars(width: int, height: int, palette: list[Color], seed: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    shift = seed % len(palette)
    colors = palette[shift:] + palette[:shift]
    for index, color in enumerate(colors):
        left, right = width * index // len(colors), width * (index + 1) // len(colors)
        draw.rectangle((left, 0, right - 1, height - 1), fill=color)
    return image


def _gradient(width: int, height: int, palette: list[Color], seed: int) -> Image.Image:
    # Pillow's 256x256 ramp, turned by the seed (a quarter turn per step) and stretched to size.
    ramp = Image.linear_gradient("L").rotate(90 * (seed % 4)).resize((width, height))
    start, end = palette[seed % len(palette)], palette[(seed + 1) % len(palette)]
    return Image.composite(Image.new("RGB", (width, height), end), Image.new("RGB", (width, height), start), ramp)


def _grid(width: int, height: int, palette: list[Color], seed: int) -> Image.Image:
    image = Image.new("RGB", (width, height), palette[0])
    draw = ImageDraw.Draw(image)
    cell = max(4, min(width, height) // (4 + seed % 8))
    line = max(1, cell // 16)
    for x in range(0, width, cell):
        draw.rectangle((x, 0, x + line - 1, height - 1), fill=palette[1])
    for y in range(0, height, cell):
        draw.rectangle((0, y, width - 1, y + line - 1), fill=palette[1])
    return image


_DRAW = {"bars": _bars, "gradient": _gradient, "grid": _grid}


def draw(prompt: str, width: int, height: int, *, seed: int = 0, pattern: str | None = None) -> Image.Image:
    """The pattern for this prompt and seed, as an RGB image of exactly `width` x `height`."""
    return _DRAW[pattern or pattern_for(prompt)](width, height, palette_for(prompt), seed)


def over(base: Image.Image, pattern: Image.Image, *, opacity: float, mask: Image.Image | None = None) -> Image.Image:
    """An edit: `pattern` laid over `base` (resized to the pattern's size) at `opacity`; with a
    mask, only where the mask is transparent (OpenAI's mask meaning: transparent may change)."""
    base = base.convert("RGB").resize(pattern.size)
    blended = Image.blend(base, pattern, opacity)
    if mask is None:
        return blended
    alpha = mask.convert("RGBA").getchannel("A").resize(pattern.size)
    changeable = alpha.point(lambda value: 255 if value == 0 else 0)
    return Image.composite(blended, base, changeable)


def encoded(image: Image.Image, fmt: str, compression: int | None) -> bytes:
    """PNG, JPEG or WebP bytes; `compression` is OpenAI's 0-100 (100 keeps the most quality)."""
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, "PNG")
    else:
        image.save(out, fmt.upper(), quality=90 if compression is None else compression)
    return out.getvalue()
