"""Image bytes in and out: sniffing, validating uploads, converting formats, mask compositing.

Everything here is CPU work on bytes; callers run it in a worker thread.
Pixel caps are checked from the header before any pixel is decoded, so a decompression bomb
costs a few bytes of parsing, not gigabytes of memory.
"""

from __future__ import annotations

import binascii
import io
import warnings
from collections.abc import Iterator

import pybase64
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

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
HEAD_BYTES = 64 * 1024  # enough for the header of every format we read


# Base64 text as an upstream sent it: a str, or a slice of the upstream's body (bytes, or a
# memoryview over it, so that megabytes of base64 are never copied out of the body they came in).
Base64Text = str | bytes | memoryview
# Validating or decoding base64 goes this many characters at a time (a multiple of 4): each step's
# output buffer is small and reused by malloc instead of a fresh multi-megabyte one (page faults).
B64_CHUNK_CHARS = 1 << 20


class ImageBytes:
    """Image bytes that may arrive as base64 and leave as base64. Each form is made only when
    asked for, so an image that needs no conversion is never decoded and re-encoded (for a 1K
    PNG that round trip was a third of the gateway's CPU per request). The base64 may be a view
    into the upstream's body (see providers/gemini.py): it then goes out as it came in.

    Decoding uses pybase64 (SIMD; ~30x binascii's 0.45 GB/s), strictly: any character outside the
    alphabet, or padding anywhere but the end, is a binascii.Error."""

    __slots__ = ("_data", "_b64", "_head")

    def __init__(self, data: bytes | None = None, *, b64: Base64Text | None = None) -> None:
        if (data is None) == (b64 is None):
            raise ValueError("give exactly one of data or b64")
        self._data = data
        self._b64 = b64
        self._head: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.read()
        return self._data

    def read(self) -> bytes:
        """The bytes, without keeping a decoded copy beside the base64 (for a one-off read, such
        as decoding for conversion: a 4K PNG is ~30 MB in each form)."""
        if self._data is not None:
            return self._data
        assert self._b64 is not None
        return pybase64.b64decode(self._b64, validate=True)

    @property
    def b64(self) -> str:
        """The base64 as text (a copy when it is a view of an upstream body)."""
        if self._b64 is None:
            self._b64 = pybase64.b64encode(self.data).decode("ascii")
        if not isinstance(self._b64, str):
            return str(self._b64, "ascii")
        return self._b64

    def b64_bytes(self) -> bytes | memoryview:
        """The base64 as bytes, for splicing into a response body: the upstream's own bytes when
        it came as a view, encoded (once) otherwise."""
        if self._b64 is None:
            self._b64 = pybase64.b64encode(self.data)
        if isinstance(self._b64, str):
            return self._b64.encode("ascii")
        return self._b64

    @property
    def is_b64(self) -> bool:
        """Whether the base64 form exists (then `b64_bytes` costs no encoding)."""
        return self._b64 is not None

    def size(self) -> int:
        """The byte length, from the base64's length when the bytes were never decoded."""
        if self._data is not None:
            return len(self._data)
        assert self._b64 is not None
        tail = self._b64[-2:]
        padding = (tail.encode("ascii", "replace") if isinstance(tail, str) else bytes(tail)).count(b"=")
        return len(self._b64) // 4 * 3 - padding

    def validate(self) -> None:
        """Check all of the base64 (binascii.Error if any of it is not), decoding it a chunk at a
        time into small buffers that are thrown away: ~0.1 ms for 2 MB."""
        for _ in self.chunks():
            pass

    def chunks(self) -> Iterator[bytes]:
        """The bytes, decoded B64_CHUNK_CHARS at a time (for writing to a file without a whole
        decoded copy in memory)."""
        if self._data is not None:
            yield self._data
            return
        text = self._b64
        assert text is not None
        if len(text) % 4:
            raise binascii.Error("base64 text of a length that is not a multiple of 4")
        last = len(text) - B64_CHUNK_CHARS
        for start in range(0, len(text), B64_CHUNK_CHARS):
            chunk = text[start : start + B64_CHUNK_CHARS]
            if start < last and chunk[-1:] in ("=", b"="):  # padding ends the whole text, not a chunk
                raise binascii.Error("base64 padding before the end")
            yield pybase64.b64decode(chunk, validate=True)

    def head(self) -> bytes:
        """The first bytes, decoding only a prefix of the base64 when that is all there is."""
        if self._data is not None:
            return self._data[:HEAD_BYTES]
        if self._head is None:  # sniffing, probing and converting all read it: decode it once
            assert self._b64 is not None
            self._head = pybase64.b64decode(self._b64[: HEAD_BYTES // 3 * 4], validate=True)
        return self._head


def decode_b64_image(b64: Base64Text) -> tuple[ImageBytes, str]:
    """Check that base64 text holds an image (from its head); ValueError if not."""
    blob = ImageBytes(b64=b64)
    try:
        head = blob.head()
    except binascii.Error as exc:
        raise ValueError("not valid base64") from exc
    fmt = sniff_format(head)
    if fmt is None:
        raise ValueError("not an image")
    return blob, fmt


def probe(blob: ImageBytes) -> tuple[str, int, int]:
    """(format, width, height) from the header, reading the whole image only if the head is short."""
    for data in (blob.head(), None):
        try:
            with Image.open(io.BytesIO(data if data is not None else blob.data)) as img:
                fmt = sniff_format(blob.head()) or (img.format or "png").lower()
                return fmt, img.size[0], img.size[1]
        except (OSError, SyntaxError):
            if data is None:
                raise
    raise AssertionError("unreachable")


# Our own cap does the real guarding; Pillow's must not fire first with a different error.
Image.MAX_IMAGE_PIXELS = None
# Load every codec now: Pillow imports them on first use, and under load that first use is many
# worker threads at once contending for the import lock.
Image.init()


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


def check_image(data: bytes, *, param: str, allowed: list[str], max_pixels: int) -> tuple[str, int, int]:
    """Validate an uploaded image fully; returns (format, width, height) as displayed (EXIF
    orientation applied) or raises a 400."""
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
            if img.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
                width, height = height, width  # a phone photo's shape is the one it is shown in
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


def needs_reencode(current: str | None, target: str | None, compression: int | None) -> bool:
    """Whether `convert` decodes and re-encodes an image now in format `current` (None: unknown)."""
    target = target or current
    return current is None or target != current or (compression is not None and target not in LOSSLESS)


def convert(blob: ImageBytes, target: str | None, compression: int | None) -> tuple[ImageBytes, str]:
    """Return (image, format). Re-encodes only when the format differs from `target`, or when a
    compression level was asked for on a lossy format (that is a real request to re-encode)."""
    current = sniff_format(blob.head())
    if current is None:
        with Image.open(io.BytesIO(blob.data)) as img:
            current = (img.format or "png").lower()
    if not needs_reencode(current, target, compression):
        return blob, current
    target = target or current  # no format asked for: keep the upstream's
    if target not in _PIL_NAMES:
        raise InvalidRequest(f"Unsupported output_format {target!r}.", param="output_format")
    with Image.open(io.BytesIO(blob.read())) as img:
        img.load()
        return ImageBytes(encode(img, target, compression)), target


def output_form(blob: ImageBytes, *, hosted: bool, inline: bool) -> ImageBytes:
    """The image in the form(s) the answer needs, made now (in a worker thread, inside the
    caller's error mapping: a broken upstream image fails here as the upstream's fault).

    A hosted image still in base64 is only validated (~0.1 ms for 2 MB): the result store decodes
    it a chunk at a time straight into the file (`ImageBytes.chunks`), so the url path makes no
    whole decoded copy. An inline one (b64_json, both) keeps, or gets, its base64."""
    if hosted:
        if blob.is_b64:
            blob.validate()
        if inline:
            blob.b64_bytes()  # encoded here, off the event loop, if it came as bytes
        return blob
    return ImageBytes(b64=blob.b64_bytes())  # only the base64 is kept


def composite_masked_edit(original: bytes, edited: bytes, mask: bytes) -> bytes:
    """Keep the original outside the mask's transparent area (OpenAI's mask semantics), for
    providers that cannot take a mask. Works at the edited image's size; returns PNG."""
    with (
        Image.open(io.BytesIO(edited)) as out_img,
        Image.open(io.BytesIO(original)) as src,
        Image.open(io.BytesIO(mask)) as mask_img,
    ):
        size = out_img.size
        result = out_img.convert("RGBA")
        base = ImageOps.exif_transpose(src).convert("RGBA").resize(size, Image.Resampling.LANCZOS)
        alpha = mask_img.convert("RGBA").getchannel("A").resize(size, Image.Resampling.BILINEAR)
        # Opaque mask pixels protect the original; transparent ones let the edit through.
        result.paste(base, (0, 0), alpha)
        buf = io.BytesIO()
        result.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
