"""A request's input images and mask: read (uploaded bytes, a URL, a data URI, or one of this
gateway's own results), checked against the model, and decoded once per request.

The pipeline loads them once; a fallback to another model only re-checks what differs between
models (how many images, which formats) on the images already loaded (`check_for_model`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import anyio.to_thread

from . import imaging
from .catalog import ModelEntry
from .config import Settings
from .conversion import ConversionPool, decode_estimate
from .errors import InvalidImage, InvalidRequest
from .fetch import ImageFetcher, own_result_name
from .providers import InputImage
from .storage import ResultStore

# An image is either uploaded bytes or a URL / data URI to fetch.
ImageSource = bytes | str


class InputLoader:
    def __init__(
        self, settings: Settings, store: ResultStore, fetcher: ImageFetcher, conversions: ConversionPool
    ) -> None:
        self.settings = settings
        self.store = store
        self.fetcher = fetcher
        self.conversions = conversions

    async def load(
        self,
        *,
        mode: str,
        images: Sequence[ImageSource],
        mask: ImageSource | None,
        model: ModelEntry,
        param: str,
        key_id: str | None,
        own_bases: Sequence[str],
    ) -> tuple[list[InputImage], InputImage | None]:
        """Every image and the mask, each checked fully (a 400 naming `param` or `mask`).
        `own_bases` are the base URLs whose `/v1/results/...` are this gateway's own results."""
        _check_count(mode, len(images), model, param)
        loaded = await _all_or_none(
            [self._load_image(src, param, model.input_formats, key_id, own_bases) for src in images]
        )
        loaded_mask = None
        if mask is not None:
            if mode != "edit":
                raise InvalidRequest("'mask' is only for edits.", param="mask")
            loaded_mask = await self._load_image(mask, "mask", ["png"], key_id, own_bases)
            first = loaded[0]
            if (loaded_mask.width, loaded_mask.height) != (first.width, first.height):
                raise InvalidRequest(
                    f"'mask' is {loaded_mask.width}x{loaded_mask.height} but the first image is "
                    f"{first.width}x{first.height}; they must be the same size.",
                    param="mask",
                )
        return loaded, loaded_mask

    async def _load_image(
        self, source: ImageSource, param: str, allowed: list[str], key_id: str | None, own_bases: Sequence[str]
    ) -> InputImage:
        s = self.settings
        if isinstance(source, str):
            source = await self._read_url(source, param, key_id, own_bases)
        elif len(source) > s.max_image_bytes:
            raise InvalidRequest(
                f"'{param}' is larger than {s.max_image_bytes} bytes.", param=param, code="payload_too_large"
            )
        data = source
        fmt, width, height = await self.conversions.run(
            _check_estimate(data, s.max_image_pixels),
            lambda: imaging.check_image(data, param=param, allowed=allowed, max_pixels=s.max_image_pixels),
        )
        return InputImage(data, imaging.MIME_BY_FORMAT[fmt], width, height)

    async def _read_url(self, url: str, param: str, key_id: str | None, own_bases: Sequence[str]) -> bytes:
        """A result URL of this gateway is read from the result store (no request to ourselves, and
        it works while private URLs are refused); any other URL is fetched under the SSRF rules."""
        s = self.settings
        # The gateway's own result URLs, or the store's (a presigned S3 URL it handed out).
        name = own_result_name(url, [b for b in own_bases if b]) or self.store.name_of(url)
        if name is None:
            return await self.fetcher.fetch(url, param=param, max_bytes=s.max_image_bytes, key_id=key_id)
        stored = await anyio.to_thread.run_sync(self.store.get, name)
        try:
            if stored is None:
                raise FileNotFoundError(name)
            data = await anyio.to_thread.run_sync(stored.read)
        except OSError as exc:  # unknown, expired, or purged between the lookup and the read
            raise InvalidRequest(
                f"'{param}': the result {name!r} of this gateway does not exist or has expired.",
                param=param,
                code="result_not_found",
            ) from exc
        if len(data) > s.max_image_bytes:
            raise InvalidRequest(
                f"'{param}' is larger than {s.max_image_bytes} bytes.", param=param, code="payload_too_large"
            )
        return data


def check_for_model(mode: str, images: Sequence[InputImage], model: ModelEntry, param: str) -> None:
    """Images loaded for one model, checked for another (a fallback): the same 400s that loading
    them for that model would give, without reading or decoding them again. (A mask is always PNG.)"""
    _check_count(mode, len(images), model, param)
    for image in images:
        if imaging.FORMAT_BY_MIME.get(image.mime_type) not in model.input_formats:
            names = ", ".join(f.upper() for f in model.input_formats)
            raise InvalidImage(f"'{param}' must be a {names} image.", param=param)


def _check_count(mode: str, count: int, model: ModelEntry, param: str) -> None:
    if mode == "edit" and not count:
        raise InvalidRequest(f"'{param}' is required for edits.", param=param, code="missing_required_parameter")
    if count > model.max_input_images:
        raise InvalidRequest(
            f"'{param}' takes at most {model.max_input_images} images for model '{model.id}'; got {count}.",
            param=param,
        )


async def _all_or_none(loads: list[Coroutine[Any, Any, InputImage]]) -> list[InputImage]:
    """Every input, or the first failure with the other loads cancelled: a bad image must not
    leave its siblings fetching (and holding their key's fetch slots) after the request failed.
    (When this task itself is cancelled, gather cancels them.)"""
    tasks = [asyncio.ensure_future(load) for load in loads]
    try:
        return list(await asyncio.gather(*tasks))
    except Exception:
        for task in tasks:
            task.cancel()
        raise


def _check_estimate(data: bytes, max_pixels: int) -> int:
    """The memory that checking an upload will take, from its header. Nothing for what the
    check refuses before decoding (not an image, over the pixel cap)."""
    try:
        _, width, height = imaging.probe(imaging.ImageBytes(data))
    except (OSError, SyntaxError, ValueError):
        return 0
    return decode_estimate(width, height) if width * height <= max_pixels else 0
