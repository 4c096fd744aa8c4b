"""The upstream's images made into the answer's: composited (an emulated mask), converted to the
requested format, measured, and then hosted as result URLs or inlined.

Each image is finished in the conversion pool, which reserves its estimated peak memory first;
each upstream image is released as soon as its own job is done.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from . import imaging
from .conversion import ConversionPool, encode_estimate
from .errors import UpstreamBadResponse, UpstreamResponseTooLarge
from .providers import InputImage, ProviderImage
from .router import Candidate
from .storage import ResultStore

# Upstream images are decoded for conversion; 4K outputs are ~17 MP, so this only stops bombs.
MAX_UPSTREAM_PIXELS = 100_000_000


@dataclass(frozen=True)
class OutputImage:
    blob: imaging.ImageBytes
    format: str
    width: int
    height: int
    revised_prompt: str | None = None
    url: str | None = None

    @property
    def data(self) -> bytes:
        return self.blob.data

    @property
    def mime_type(self) -> str:
        return imaging.MIME_BY_FORMAT[self.format]


# One upstream image and the candidate whose call made it (its mask handling decides compositing).
Delivered = tuple[Candidate, ProviderImage]


@dataclass(frozen=True)
class Finishing:
    """What every image of one request is finished to."""

    target: str | None  # the requested output_format; None keeps the upstream's
    compression: int | None
    first_input: InputImage | None  # an emulated mask composites the original back from it
    mask: InputImage | None
    hosted: bool  # stored as a result URL: checked now, so a broken image is the upstream's fault
    inline: bool  # base64 in the answer (b64_json, both, sync_mode)


async def finish_images(
    conversions: ConversionPool,
    delivered: list[Delivered],
    how: Finishing,
    *,
    deadline: float | None = None,
    on_image: Callable[[int, OutputImage], None] | None = None,
) -> list[OutputImage]:
    """Composite, convert and measure each image in the conversion pool. Empties `delivered`, so
    that each upstream image is released as soon as its own job is done. `on_image(index, image)`
    is called as each one is finished, in the order they finish."""

    def finish(image: ProviderImage, composite: bool, width: int, height: int, compression: int | None) -> OutputImage:
        blob = image.blob
        try:
            if composite:
                assert how.first_input is not None and how.mask is not None
                blob = imaging.ImageBytes(
                    imaging.composite_masked_edit(how.first_input.data, blob.read(), how.mask.data)
                )
            blob, fmt = imaging.convert(blob, how.target, compression)
            blob = imaging.output_form(blob, hosted=how.hosted, inline=how.inline)
        except (binascii.Error, OSError, SyntaxError, ValueError) as exc:
            raise _undecodable() from exc
        return OutputImage(blob, fmt, width, height, image.revised_prompt)

    async def one(index: int, candidate: Candidate, image: ProviderImage) -> OutputImage:
        composite = how.mask is not None and candidate.mask_emulated
        try:
            # Compositing and converting keep the pixel size, so this one probe measures the result.
            current, width, height = _check_upstream_image(image.blob, MAX_UPSTREAM_PIXELS)
        except (binascii.Error, OSError, SyntaxError, ValueError) as exc:
            # Only the head was checked on arrival; the rest of the upstream's image is broken.
            raise _undecodable() from exc
        # An upstream that made the format itself was sent the compression too: a re-encode would only lose.
        compression = None if current == how.target and candidate.compressed_upstream else how.compression
        estimate = 0  # passing the image through decodes no pixels
        if composite or imaging.needs_reencode(current, how.target, compression):
            estimate = encode_estimate(width, height, how.target or current, composite=composite)
        if estimate == 0:  # passed through: its base64 is checked at ~20 GB/s, no pixels; no thread hop
            output = finish(image, composite, width, height, compression)
        else:
            output = await conversions.run(
                estimate, finish, image, composite, width, height, compression, deadline=deadline
            )
        if on_image is not None:
            on_image(index, output)
        return output

    jobs = [one(index, candidate, image) for index, (candidate, image) in enumerate(delivered)]
    delivered.clear()
    return list(await asyncio.gather(*jobs))


async def finish_partial(
    conversions: ConversionPool,
    image: ProviderImage,
    target: str | None,
    compression: int | None,
    *,
    deadline: float | None = None,
) -> OutputImage:
    """An interim (partial) image in the format asked for the final ones. It is never hosted or
    composited: it goes out inline, in its partial_image event, as a preview."""
    current, width, height = _check_upstream_image(image.blob, MAX_UPSTREAM_PIXELS)

    def convert() -> OutputImage:
        blob, fmt = imaging.convert(image.blob, target, compression)
        return OutputImage(blob, fmt, width, height)

    if not imaging.needs_reencode(current, target, compression):
        return convert()
    estimate = encode_estimate(width, height, target or current, composite=False)
    return await conversions.run(estimate, convert, deadline=deadline)


async def host_all(store: ResultStore, images: list[OutputImage], base_url: str) -> list[OutputImage]:
    """Store every image, or none: when one cannot be kept (StorageFull or StorageUnavailable, 503,
    leaving no file), those stored before it are deleted, since no answer will ever name their URLs.
    Each URL is the store's own when it has one (a presigned S3 URL), else the gateway's."""
    hosted: list[tuple[str, str | None]] = []
    try:
        for image in images:
            # The blob as it is: base64 is decoded a chunk at a time into the file (storage.put).
            hosted.append(await anyio.to_thread.run_sync(_host_one, store, image))
    except BaseException:
        # No await here: on a cancel (client gone) an await would be interrupted and leave the
        # files behind; a few small deletes on the loop are the lesser cost, on a failure path.
        for name, _ in hosted:
            store.delete(name)
        raise
    return [
        dataclasses.replace(image, url=own_url or f"{base_url}/v1/results/{name}")
        for image, (name, own_url) in zip(images, hosted, strict=True)
    ]


def _host_one(store: ResultStore, image: OutputImage) -> tuple[str, str | None]:
    """(name, the store's own URL or None), in one worker thread: presigning reads the result's row."""
    name = store.put(image.blob, image.mime_type)
    try:
        return name, store.public_url(name)
    except BaseException:
        store.delete(name)
        raise


def inline_urls(images: list[OutputImage]) -> list[OutputImage]:
    """sync_mode: the media comes back inline, as data URIs in `url`."""
    return [dataclasses.replace(o, url=f"data:{o.mime_type};base64,{o.blob.b64}") for o in images]


def _check_upstream_image(blob: imaging.ImageBytes, max_pixels: int) -> tuple[str, int, int]:
    """Upstream bytes are decoded for conversion too: the same bomb guard as for uploads.
    Returns the image's (format, width, height)."""
    fmt, width, height = imaging.probe(blob)
    if width * height > max_pixels:
        raise UpstreamResponseTooLarge(f"The upstream sent a {width}x{height} image, over the pixel limit.")
    return fmt, width, height


def _undecodable() -> UpstreamBadResponse:
    return UpstreamBadResponse("The upstream sent an image that cannot be decoded.")
