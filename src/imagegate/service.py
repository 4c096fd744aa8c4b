"""One image request from parsed fields to finished images: route, normalize, call, convert, host.

The HTTP layer and the CLI both call `ImageService.create()`; neither knows about providers.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from . import imaging
from .catalog import Mode, ModelEntry
from .config import Settings
from .conversion import ConversionPool, decode_estimate, encode_estimate
from .dispatch import CallPlan, Dispatcher, Served
from .errors import ImagegateError, InvalidRequest, UpstreamError, UpstreamUnavailable
from .fetch import ImageFetcher, own_result_name
from .normalize import Adjustment, Layout, resolve_layout
from .params import NormalizedParams, normalize_params, provider_view, refused_everywhere
from .pricing import Charge, Cost, total_cost
from .providers import InputImage, ProviderImage, TokenSplit
from .resilience import is_capacity, is_upstream_failure
from .router import Route, Router
from .storage import ResultStore
from .usage import UsageRecord, UsageSink, record_after_failure, record_usage

# Upstream images are decoded for conversion; 4K outputs are ~17 MP, so this only stops bombs.
MAX_UPSTREAM_PIXELS = 100_000_000
# An image is either uploaded bytes or a URL / data URI to fetch.
ImageSource = bytes | str


@dataclass
class ImageJob:
    mode: Mode
    params: dict[str, Any]
    images: list[ImageSource] = field(default_factory=list)
    mask: ImageSource | None = None
    request_id: str = ""  # the gateway's own, unique per request
    client_request_id: str | None = None  # the x-request-id the client sent, if any
    key_id: str | None = None
    image_param: str = "image"  # the field the images came in, for error messages ("images" in JSON)
    public_base_url: str | None = None  # base of result URLs; default from the settings
    request_base_url: str | None = None  # the base the request itself came to: its result URLs are ours too


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


@dataclass
class ImagesOutcome:
    created: int
    model: str
    provider: str
    layout: Layout
    images: list[OutputImage]
    response_format: str
    seed: int | None
    adjustments: list[Adjustment]
    cost: float
    currency: str
    cost_estimated: bool  # the serving provider's real price is not known for some call
    input_tokens: int
    output_tokens: int
    # OpenAI's input_tokens_details / output_tokens_details, summed over the upstream calls.
    input_details: TokenSplit = TokenSplit()
    output_details: TokenSplit = TokenSplit()

    def effective(self) -> dict[str, Any]:
        first = self.images[0]
        return {
            "model": self.model,
            "provider": self.provider,
            "aspect_ratio": self.layout.aspect_ratio,
            "resolution": self.layout.resolution,
            "width": first.width,
            "height": first.height,
            "output_format": first.format,
            "response_format": self.response_format,
            "n": len(self.images),
            "seed": self.seed,
        }


class ImageService:
    def __init__(
        self,
        settings: Settings,
        router: Router,
        store: ResultStore,
        usage: UsageSink,
        fetcher: ImageFetcher,
        default_model: str | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.store = store
        self.usage = usage
        self.fetcher = fetcher
        self.default_model = default_model or next(iter(router.catalog)).id
        self.dispatcher = Dispatcher(settings, router.breaker)
        self.conversions = ConversionPool.from_settings(settings)

    async def create(self, job: ImageJob, *, fallback_from: str | None = None,
                     carried: list[Adjustment] | None = None, deadline: float | None = None) -> ImagesOutcome:
        # One deadline for the whole request: fetching its inputs, every upstream call, the output
        # pipeline, a fallback.
        deadline = self.dispatcher.deadline() if deadline is None else deadline
        # 1. The model, and every field checked against it. `model_id` is what the client sent (an
        #    alias stays an alias in every report); `model` is the entry it resolves to.
        model_id = str(job.params.get("model") or self.default_model)
        model = self.router.model(model_id)
        if job.mode not in model.modes:
            raise InvalidRequest(f"Model '{model_id}' does not support {job.mode} requests.", param="model")
        strict_params = self.settings.strict_parameters
        params = normalize_params(job.params, model=model, mode=job.mode, strict=strict_params)
        # 2. Providers, best first, each with its own view of the parameters (400s happen here,
        #    before anything is sent anywhere).
        routes = self.router.routes(model_id, given=set(params.values))
        strict = refused_everywhere(params, model, (r.binding for r in routes), strict=strict_params)
        views = {r.provider_id: provider_view(params, model=model, provider_id=r.provider_id, binding=r.binding,
                                              strict=strict) for r in routes}
        # 3. Inputs, then the layout (an edit keeps its first image's shape by default).
        try:
            async with asyncio.timeout_at(deadline):
                images, mask = await self._load_inputs(job, model)
        except TimeoutError as exc:
            raise self.dispatcher.timed_out(" (while fetching its input images)") from exc
        input_shape = (images[0].width, images[0].height) if images else None
        layout = resolve_layout(model, size=params.get("size"), aspect_ratio=params.get("aspect_ratio"),
                                resolution=params.get("resolution"), input_shape=input_shape)
        # 4. Upstream calls: n split, retried, failed over, within the deadline.
        n = int(params.get("n", 1))
        paid: list[Served] = []  # each call that made images, as soon as it returns
        try:
            served, errors = await self.dispatcher.run(routes, views, CallPlan(job.mode, layout, tuple(images), mask),
                                                        n, deadline, paid=paid)
        except BaseException:
            # The deadline or a client gone ended the run, maybe after some calls were billed.
            if made := sum(len(item.result.images) for item in paid):
                cost = self._cost(paid, views, layout, input_images=len(images))
                record_after_failure(self.usage, self._usage_record(job, model_id, paid, made, cost, params))
            raise
        delivered = [(item.route, image) for item in served for image in item.result.images]
        if not delivered:
            if self._may_fall_back(model, params, errors, fallback_from):
                return await self._fall_back(job, model, model_id, deadline)
            raise _most_relevant(errors)
        # The upstream is paid for from here on: whatever fails below (the n-failure policy, no room
        # to convert or store, a client gone), the usage row is written before the error leaves.
        cost = self._cost(served, views, layout, input_images=len(images))
        usage = self._usage_record(job, model_id, served, len(delivered), cost, params)
        if errors and self.settings.n_failure_policy == "fail":
            record_after_failure(self.usage, usage)
            raise _most_relevant(errors)
        served_by = dict.fromkeys(item.route.provider_id for item in served)
        adjustments = list(layout.adjustments) + _unique(a for p in served_by for a in views[p].ignored)
        adjustments += _count_adjustments(n, len(delivered), len(errors))
        # 5. Output pipeline.
        try:
            # Left out: the operator's default, `both` unless set, so that clients reading only
            # b64_json (gpt-image style) and those reading only url (DALL-E style) both work.
            response_format = params.get("response_format", self.settings.default_response_format)
            hosted = response_format in ("url", "both") and not params.get("sync_mode")
            # The upstream's images (base64 text of megabytes each) are held by `delivered` alone from
            # here, which _finish_images consumes: each is freed once converted, not when all are.
            for item in served:
                item.result.images.clear()
            outputs = await self._finish_images(delivered, params, images, mask, hosted,
                                                inline=response_format != "url",
                                                deadline=deadline)
            adjustments += _dimension_adjustments(layout, outputs)
            compression = params.get("output_compression")
            if compression is not None and outputs[0].format in imaging.LOSSLESS:
                adjustments.append(Adjustment("output_compression", str(compression),
                                              f"ignored ({outputs[0].format} is lossless)"))
            if hosted:
                base = job.public_base_url or self.settings.base_public_url
                outputs = await self._host_all(outputs, base)
            elif response_format in ("url", "both"):  # sync_mode: the media comes back inline, as a data URI
                outputs = [dataclasses.replace(o, url=f"data:{o.mime_type};base64,{o.blob.b64}") for o in outputs]
            if fallback_from is not None:
                adjustments[:0] = [Adjustment("model", fallback_from, f"{model_id} (allow_fallback_model)"),
                                   *(carried or [])]
            outcome = self._outcome(model_id, served, layout, outputs, params, response_format, adjustments, cost)
        except BaseException:
            record_after_failure(self.usage, usage)
            raise
        await record_usage(self.usage, usage)
        return outcome

    @staticmethod
    def _may_fall_back(model: ModelEntry, params: NormalizedParams, errors: list[ImagegateError],
                       fallback_from: str | None) -> bool:
        """`allow_fallback_model`: only when every provider of the model is at capacity."""
        return (
            bool(params.get("allow_fallback_model")) and model.fallback_model is not None
            and fallback_from is None and bool(errors) and all(is_capacity(e) for e in errors)
        )

    async def _fall_back(self, job: ImageJob, model: ModelEntry, requested: str, deadline: float) -> ImagesOutcome:
        assert model.fallback_model is not None
        fallback = self.router.model(model.fallback_model)
        params, dropped = self._fallback_params(job, fallback)
        try:
            return await self.create(dataclasses.replace(job, params=params), fallback_from=requested,
                                     carried=dropped, deadline=deadline)
        except ImagegateError as exc:
            raise UpstreamUnavailable(
                f"Every provider of '{model.id}' is at capacity, and the fallback model "
                f"'{model.fallback_model}' failed too: {exc.message}", code="upstream_at_capacity",
                retry_after=exc.retry_after,
            ) from exc

    def _fallback_params(self, job: ImageJob, fallback: ModelEntry) -> tuple[dict[str, Any], list[Adjustment]]:
        """The request as the fallback model can take it: what it lacks is left out and said so,
        instead of failing a request the caller allowed to degrade."""
        routes = self.router.routes(fallback.id)
        params: dict[str, Any] = {"model": fallback.id}
        dropped: list[Adjustment] = []
        for name, value in job.params.items():
            if name in ("model", "allow_fallback_model") or value is None:
                continue
            spec = fallback.parameters.get(name)
            honoured = spec is not None and spec.availability(job.mode) != "not_available" and any(
                not r.binding.unavailable([name]) for r in routes)
            if honoured or name == "prompt":
                params[name] = value
            else:
                dropped.append(Adjustment(name, str(value), f"not applied (fallback model {fallback.id} lacks it)"))
        return params, dropped

    async def _load_inputs(
        self, job: ImageJob, model: ModelEntry
    ) -> tuple[list[InputImage], InputImage | None]:
        param = job.image_param
        if job.mode == "edit" and not job.images:
            raise InvalidRequest(f"'{param}' is required for edits.", param=param, code="missing_required_parameter")
        if len(job.images) > model.max_input_images:
            raise InvalidRequest(
                f"'{param}' takes at most {model.max_input_images} images for model '{model.id}'; "
                f"got {len(job.images)}.",
                param=param,
            )
        images = await _all_or_none([self._load_image(job, src, param, model.input_formats) for src in job.images])
        mask = None
        if job.mask is not None:
            if job.mode != "edit":
                raise InvalidRequest("'mask' is only for edits.", param="mask")
            mask = await self._load_image(job, job.mask, "mask", ["png"])
            first = images[0]
            if (mask.width, mask.height) != (first.width, first.height):
                raise InvalidRequest(
                    f"'mask' is {mask.width}x{mask.height} but the first image is {first.width}x{first.height}; "
                    "they must be the same size.", param="mask",
                )
        return list(images), mask

    async def _load_image(self, job: ImageJob, source: ImageSource, param: str, allowed: list[str]) -> InputImage:
        s = self.settings
        if isinstance(source, str):
            source = await self._read_url(job, source, param)
        elif len(source) > s.max_image_bytes:
            raise InvalidRequest(f"'{param}' is larger than {s.max_image_bytes} bytes.", param=param,
                                 code="payload_too_large")
        data = source
        fmt, width, height = await self.conversions.run(
            _check_estimate(data, s.max_image_pixels),
            lambda: imaging.check_image(data, param=param, allowed=allowed, max_pixels=s.max_image_pixels),
        )
        return InputImage(data, imaging.MIME_BY_FORMAT[fmt], width, height)

    async def _read_url(self, job: ImageJob, url: str, param: str) -> bytes:
        """A result URL of this gateway is read from the result store (no request to ourselves, and
        it works while private URLs are refused); any other URL is fetched under the SSRF rules."""
        s = self.settings
        bases = [b for b in (job.public_base_url, s.base_public_url, job.request_base_url) if b]
        name = own_result_name(url, bases)
        if name is None:
            return await self.fetcher.fetch(url, param=param, max_bytes=s.max_image_bytes, key_id=job.key_id)
        stored = await anyio.to_thread.run_sync(self.store.get, name)
        try:
            if stored is None:
                raise FileNotFoundError(name)
            data = await anyio.to_thread.run_sync(stored.path.read_bytes)
        except OSError as exc:  # unknown, expired, or purged between the lookup and the read
            raise InvalidRequest(f"'{param}': the result {name!r} of this gateway does not exist or has expired.",
                                 param=param, code="result_not_found") from exc
        if len(data) > s.max_image_bytes:
            raise InvalidRequest(f"'{param}' is larger than {s.max_image_bytes} bytes.", param=param,
                                 code="payload_too_large")
        return data

    async def _finish_images(
        self, delivered: list[tuple[Route, ProviderImage]], params: NormalizedParams, images: list[InputImage],
        mask: InputImage | None, hosted: bool, inline: bool, deadline: float | None = None,
    ) -> list[OutputImage]:
        """Composite, convert and measure each image in the conversion pool (each job reserves its
        estimated peak memory first). Hosted images are fully decoded here, so a broken upstream
        image fails as the upstream's fault; `inline` ones (b64_json, both, sync_mode) get their
        base64 made here too. Empties `delivered`, so that each upstream image is released as soon
        as its own job is done."""
        target = params.get("output_format")
        compression = params.get("output_compression")

        def finish(route: Route, image: ProviderImage, composite: bool, width: int, height: int) -> OutputImage:
            blob = image.blob
            try:
                if composite:
                    assert mask is not None
                    blob = imaging.ImageBytes(imaging.composite_masked_edit(images[0].data, blob.read(), mask.data))
                blob, fmt = imaging.convert(blob, target, compression)
                blob = imaging.output_form(blob, hosted=hosted, inline=inline)
            except (binascii.Error, OSError, SyntaxError, ValueError) as exc:
                raise _undecodable() from exc
            return OutputImage(blob, fmt, width, height, image.revised_prompt)

        async def one(route: Route, image: ProviderImage) -> OutputImage:
            handling = route.binding.handling("mask")
            composite = mask is not None and handling is not None and handling.handling == "emulated"
            try:
                # Compositing and converting keep the pixel size, so this one probe measures the result.
                current, width, height = _check_upstream_image(image.blob, MAX_UPSTREAM_PIXELS)
            except (binascii.Error, OSError, SyntaxError, ValueError) as exc:
                # Only the head was checked on arrival; the rest of the upstream's image is broken.
                raise _undecodable() from exc
            estimate = 0  # passing the image through decodes no pixels
            if composite or imaging.needs_reencode(current, target, compression):
                estimate = encode_estimate(width, height, target or current, composite=composite)
            if estimate == 0:  # passed through: its base64 is checked at ~20 GB/s, no pixels; no thread hop
                return finish(route, image, composite, width, height)
            return await self.conversions.run(estimate, finish, route, image, composite, width, height,
                                              deadline=deadline)

        jobs = [one(r, img) for r, img in delivered]
        delivered.clear()
        return list(await asyncio.gather(*jobs))

    async def _host_all(self, images: list[OutputImage], base_url: str) -> list[OutputImage]:
        """Store every image, or none: when one cannot be kept (StorageFull, 503, leaving no file),
        those stored before it are deleted, since no answer will ever name their URLs."""
        names: list[str] = []
        try:
            for image in images:
                names.append(await anyio.to_thread.run_sync(self.store.put, image.blob, image.mime_type))
        except BaseException:
            # No await here: on a cancel (client gone) an await would be interrupted and leave the
            # files behind; a few small deletes on the loop are the lesser cost, on a failure path.
            for name in names:
                self.store.delete(name)
            raise
        return [dataclasses.replace(image, url=f"{base_url}/v1/results/{name}")
                for image, name in zip(images, names, strict=True)]

    @staticmethod
    def _cost(served: list[Served], views: dict[str, NormalizedParams], layout: Layout, input_images: int) -> Cost:
        """Each served call at its own provider's price (failover can split a request between two),
        for what the upstream made: counted before the output pipeline releases the images."""
        return total_cost(
            Charge(item.route.model.binding_price(item.route.provider_id), layout.resolution,
                   len(item.result.images), input_images, views[item.route.provider_id].options)
            for item in served
        )

    def _outcome(
        self, model_id: str, served: list[Served], layout: Layout, outputs: list[OutputImage],
        params: NormalizedParams, response_format: str, adjustments: list[Adjustment], cost: Cost,
    ) -> ImagesOutcome:
        providers = ",".join(dict.fromkeys(item.route.provider_id for item in served))
        return ImagesOutcome(
            created=int(time.time()), model=model_id, provider=providers, layout=layout,
            images=outputs, response_format=response_format, seed=params.get("seed"), adjustments=adjustments,
            cost=cost.amount, currency=cost.currency, cost_estimated=cost.estimated,
            input_tokens=sum(item.result.input_tokens for item in served),
            output_tokens=sum(item.result.output_tokens for item in served),
            input_details=sum((item.result.input_split() for item in served), TokenSplit()),
            output_details=sum((item.result.output_split() for item in served), TokenSplit()),
        )

    @staticmethod
    def _usage_record(job: ImageJob, model_id: str, served: list[Served], made: int, cost: Cost,
                      params: NormalizedParams) -> UsageRecord:
        """The usage row of a request whose upstream calls succeeded: what was made, whether it was
        then answered or failed later (one builder, so both rows carry the same fields)."""
        return UsageRecord(
            request_id=job.request_id, key_id=job.key_id, user=params.get("user"),
            safety_identifier=params.get("safety_identifier"), model=model_id,
            provider=",".join(dict.fromkeys(item.route.provider_id for item in served)), mode=job.mode,
            images=made, cost=cost.amount, cost_estimated=cost.estimated, client_request_id=job.client_request_id,
            input_tokens=sum(item.result.input_tokens for item in served),
            output_tokens=sum(item.result.output_tokens for item in served),
        )


def _most_relevant(errors: list[ImagegateError]) -> ImagegateError:
    """The client's own mistake beats any upstream trouble; otherwise the last provider's error."""
    if not errors:
        return ImagegateError("The upstream returned no images.")
    return next((e for e in errors if not is_upstream_failure(e)), errors[-1])


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


def _unique(adjustments: Iterable[Adjustment]) -> list[Adjustment]:
    return list(dict.fromkeys(adjustments))


def _check_upstream_image(blob: imaging.ImageBytes, max_pixels: int) -> tuple[str, int, int]:
    """Upstream bytes are decoded for conversion too: the same bomb guard as for uploads.
    Returns the image's (format, width, height)."""
    fmt, width, height = imaging.probe(blob)
    if width * height > max_pixels:
        raise UpstreamError(f"The upstream sent a {width}x{height} image, over the pixel limit.",
                            code="upstream_response_too_large")
    return fmt, width, height


def _undecodable() -> UpstreamError:
    return UpstreamError("The upstream sent an image that cannot be decoded.", code="upstream_bad_response")


def _check_estimate(data: bytes, max_pixels: int) -> int:
    """The memory that checking an upload will take, from its header. Nothing for what the
    check refuses before decoding (not an image, over the pixel cap)."""
    try:
        _, width, height = imaging.probe(imaging.ImageBytes(data))
    except (OSError, SyntaxError, ValueError):
        return 0
    return decode_estimate(width, height) if width * height <= max_pixels else 0


def _count_adjustments(n: int, delivered: int, failed_calls: int) -> list[Adjustment]:
    """Fewer images than asked (failed calls, a short upstream) or more (limit_generations off)."""
    if delivered == n:
        return []
    why = f"{failed_calls} upstream calls failed" if failed_calls else "as many as the upstream returned"
    return [Adjustment("n", str(n), f"{delivered} ({why})")]


def _dimension_adjustments(layout: Layout, outputs: list[OutputImage]) -> list[Adjustment]:
    """The provider decides the final pixels; say so when they differ from the size table."""
    first = outputs[0]
    if (first.width, first.height) == (layout.width, layout.height):
        return []
    return [Adjustment("size", f"{layout.width}x{layout.height}", f"{first.width}x{first.height} (as produced)")]
