"""Image bytes in and out: sniffing, validating uploads, converting formats, mask compositing.

Everything here is CPU work on bytes; callers run it in a worker thread.
Pixel caps are checked from the header before any pixel is decoded, so a decompression bomb
costs a few bytes of parsing, not gigabytes of memory.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from .errors import InvalidImage, InvalidRequest

MIME_BY_FORMAT = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
}
FORMAT_BY_MIME = {mime: fmt for fmt, mime in MIME_BY_FORMAT.items()}
LOSSLESS = ("png", "gif")  # output_compression does not apply to these
_PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP", "avif": "AVIF"}

# Our own cap does the real guarding; Pillow's must not fire first with a different error.
Image.MAX_IMAGE_PIXELS = None


def sniff_format(data: bytes) -> str | None:
    """The image format from its magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def check_image(
    data: bytes, *, param: str, allowed: list[str], max_pixels: int
) -> tuple[str, int, int]:
    """Validate an uploaded image fully; returns (format, width, height) or raises a 400."""
    fmt = sniff_format(data)
    if fmt not in allowed:
        names = ", ".join(f.upper() for f in allowed)
        raise InvalidImage(f"'{param}' must be a {names} image.", param=param)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"'{param}' is {width}x{height} = {width * height} pixels; the limit is {max_pixels}.",
                    param=param,
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()  # catches truncated and corrupt files now, not inside a provider
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"'{param}' could not be decoded as an image: {exc}", param=param) from exc
    return fmt, width, height


def dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the header only."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _prepare_for(img: Image.Image, fmt: str) -> Image.Image:
    if fmt == "jpeg":
        return img.convert("RGB") if img.mode != "RGB" else img
    if fmt == "gif":
        return img.convert("RGBA").quantize(256) if "A" in img.getbands() else img.convert("RGB").quantize(256)
    if img.mode not in ("RGB", "RGBA"):
        return img.convert("RGBA" if "A" in img.getbands() or img.mode == "P" else "RGB")
    return img


def encode(img: Image.Image, fmt: str, compression: int | None) -> bytes:
    """Encode to `fmt`; `compression` is OpenAI's 0-100 where 100 keeps the most quality."""
    out = io.BytesIO()
    options: dict[str, object] = {}
    if fmt in ("jpeg", "webp", "avif"):
        options["quality"] = 90 if compression is None else compression
    if fmt == "png":
        options["compress_level"] = 6
    _prepare_for(img, fmt).save(out, format=_PIL_NAMES[fmt], **options)
    return out.getvalue()


def convert(data: bytes, target: str | None, compression: int | None) -> tuple[bytes, str]:
    """Return (bytes, format). Re-encodes only when the format differs from `target`, or when a
    compression level was asked for on a lossy format (that is a real request to re-encode)."""
    current = sniff_format(data)
    if current is None:
        with Image.open(io.BytesIO(data)) as img:
            current = (img.format or "png").lower()
    target = target or current  # no format asked for: keep the upstream's
    if target == current and (compression is None or target in LOSSLESS):
        return data, current
    if target not in _PIL_NAMES:
        raise InvalidRequest(f"Unsupported output_format {target!r}.", param="output_format")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return encode(img, target, compression), target


def composite_masked_edit(original: bytes, edited: bytes, mask: bytes) -> bytes:
    """Keep the original outside the mask's transparent area (OpenAI's mask semantics), for
    providers that cannot take a mask. Works at the edited image's size; returns PNG."""
    with Image.open(io.BytesIO(edited)) as out_img, Image.open(io.BytesIO(original)) as src, Image.open(
        io.BytesIO(mask)
    ) as mask_img:
        size = out_img.size
        result = out_img.convert("RGBA")
        base = ImageOps.exif_transpose(src).convert("RGBA").resize(size, Image.Resampling.LANCZOS)
        alpha = mask_img.convert("RGBA").getchannel("A").resize(size, Image.Resampling.BILINEAR)
        # Opaque mask pixels protect the original; transparent ones let the edit through.
        result.paste(base, (0, 0), alpha)
        buf = io.BytesIO()
        result.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
