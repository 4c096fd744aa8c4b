"""The `local` provider: open diffusion models run in this process by the engine.

A binding's `upstream_model` is the weights' source (a directory or a hub id). Each source is
loaded once per process, at server start or on first use, and served by one `Engine`, which
queues and batches requests. This module turns a `ProviderRequest` into an engine `Job` and the
job's images back into a `ProviderResult`; everything torch-shaped stays in `imagegate.engine`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import secrets
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import torch
from PIL import Image, ImageOps

from .. import imaging, params
from ..catalog import Mode
from ..engine.describe import Checkpoint, mode_defaults, read_checkpoint
from ..engine.loader import LoadedModel, Task, load_model
from ..engine.pipelines import Job, JobOutput
from ..engine.runner import Engine
from ..engine.runner import EngineBusy as QueueFull
from ..errors import (
    ContentPolicyViolation,
    EngineBusy,
    ImagegateError,
    InvalidRequest,
    UnsupportedParameter,
    UpstreamError,
    UpstreamUnavailable,
)
from .base import ImageProvider, InputImage, ProviderImage, ProviderRequest, ProviderResult

SEED_RANGE = 2**31
# Pipeline arguments a request may not set through pass-through: the engine owns them.
_RESERVED = frozenset(
    {
        "prompt",
        "negative_prompt",
        "image",
        "mask_image",
        "generator",
        "latents",
        "output_type",
        "height",
        "width",
        "num_images_per_prompt",
        "return_dict",
        "prompt_embeds",
        "negative_prompt_embeds",
        "callback",
        "callback_on_step_end",
        "callback_steps",
        "callback_on_step_end_tensor_inputs",
        "cross_attention_kwargs",
        "ip_adapter_image",
        "ip_adapter_image_embeds",
        "timesteps",
        "sigmas",
    }
)


@dataclass(frozen=True)
class LocalEngineSettings:
    device: str = "auto"
    dtype: str = "auto"
    max_batch_images: int = 8
    max_queued_images: int = 32


class LocalProvider(ImageProvider):
    provider_id = "local"

    def __init__(
        self,
        sources: list[str],
        settings: LocalEngineSettings | None = None,
        checkpoints: dict[str, Checkpoint] | None = None,
    ) -> None:
        self.sources = sources
        self.settings = settings or LocalEngineSettings()
        # Checkpoints the gateway already read for its catalog: hub configs are not fetched again.
        self.checkpoints = dict(checkpoints or {})
        self.engines: dict[str, Engine] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        """Load every configured model now, so the first request does not wait for it."""
        for source in self.sources:
            await self.engine(source)

    async def engine(self, source: str) -> Engine:
        """The engine for `source`, loading the weights on first use (once, whoever asks)."""
        lock = self._loading.setdefault(source, asyncio.Lock())
        async with lock:
            if source not in self.engines:
                s = self.settings
                model = await anyio.to_thread.run_sync(self._load, source)
                self.engines[source] = Engine(
                    model, max_batch_images=s.max_batch_images, max_queued_images=s.max_queued_images
                )
        return self.engines[source]

    def queued_images(self) -> int | None:
        return sum(engine.queued_images for engine in self.engines.values())

    def _load(self, source: str) -> LoadedModel:
        checkpoint = self.checkpoints.get(source) or read_checkpoint(source)
        return load_model(checkpoint, device=self.settings.device, dtype=self.settings.dtype)

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        return await self._run(request)

    async def edit(self, request: ProviderRequest) -> ProviderResult:
        return await self._run(request)

    async def _run(self, request: ProviderRequest) -> ProviderResult:
        engine = await self.engine(request.plan.upstream_model)
        job = await anyio.to_thread.run_sync(make_job, engine.model, request)
        try:
            output = await _submit(engine, job)
        except QueueFull as exc:
            raise EngineBusy(
                f"The local engine is busy: {exc}. Retry after {exc.retry_after:.0f} s.",
                retry_after=exc.retry_after,
            ) from exc
        except ImagegateError:
            raise
        except torch.OutOfMemoryError as exc:
            raise UpstreamUnavailable(
                "The local engine ran out of device memory; try fewer or smaller images.",
                code="engine_out_of_memory",
                retry_after=5,
            ) from exc
        except Exception as exc:
            raise UpstreamError(
                f"The local engine failed: {type(exc).__name__}: {exc}", code="local_engine_error"
            ) from exc
        return await anyio.to_thread.run_sync(encode_output, output, request)

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()


async def _submit(engine: Engine, job: Job) -> JobOutput:
    """`n` is one batch up to the engine's batch size (its memory bound); beyond it, the images
    go in several jobs, queued together. A failed part abandons the others."""
    size = engine.max_batch_images
    parts = [dataclasses.replace(job, seeds=job.seeds[i : i + size]) for i in range(0, job.count, size)]
    if len(parts) == 1:
        return await engine.submit(job)
    tasks = [asyncio.ensure_future(engine.submit(part)) for part in parts]
    try:
        outputs = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return JobOutput([image for output in outputs for image in output.images], any(o.flagged for o in outputs))


# --- request -> job --------------------------------------------------------------------------


def _task(model: LoadedModel, request: ProviderRequest) -> Task:
    kind = model.checkpoint.kind
    if request.mode == "t2i":
        return "text2image"
    if kind == "instruct":
        return "instruct"  # the gateway composites the mask
    if kind == "inpaint" and request.mask is None:
        raise InvalidRequest(
            f"'mask' is required: '{model.checkpoint.source}' is an inpainting model.",
            param="mask",
            code="missing_required_parameter",
        )
    return "inpaint" if request.mask is not None else "img2img"


def _rgb(image: InputImage, size: tuple[int, int]) -> Image.Image:
    with Image.open(io.BytesIO(image.data)) as img:
        return ImageOps.exif_transpose(img).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _repaint_mask(mask: InputImage, size: tuple[int, int]) -> Image.Image:
    """OpenAI masks mark the area to edit as transparent; diffusers wants it white."""
    with Image.open(io.BytesIO(mask.data)) as img:
        alpha = img.convert("RGBA").getchannel("A").resize(size, Image.Resampling.BILINEAR)
    return alpha.point(lambda a: 255 - a)


def _settings(request: ProviderRequest) -> dict[str, Any]:
    """The request's engine settings over the binding's defaults (or the checkpoint's preset)."""
    plan = request.plan
    mode: Mode = "edit" if request.mode == "edit" else "t2i"
    defaults = plan.defaults.get(mode) or mode_defaults(plan.upstream_model)[mode]
    return {**defaults, **request.options}


def _pass_through(model: LoadedModel, task: Task, extra: dict[str, Any]) -> dict[str, Any]:
    """Unrecognized fields go to the pipeline when it takes them as plain values (eta,
    guidance_rescale, clip_skip...), converted to the type it expects (form fields arrive as
    text); anything else is a 400 rather than silently dropped."""
    accepted: dict[str, Any] = {}
    for name, value in sorted(extra.items()):
        wanted = None if name in _RESERVED else model.scalar_type(task, name)
        if wanted is None:
            raise UnsupportedParameter(
                f"Parameter '{name}' is not supported by the local model '{model.checkpoint.source}'.", param=name
            )
        accepted[name] = _as_type(name, value, wanted)
    return accepted


def _as_type(name: str, value: Any, wanted: type) -> Any:
    """The pipeline's type for a pass-through value, by the gateway's one set of typing rules."""
    return params.coerce_scalar(name, value, wanted)


def make_job(model: LoadedModel, request: ProviderRequest) -> Job:
    """Blocking (decodes and resizes the input images): run it in a worker thread."""
    task = _task(model, request)
    values = _settings(request)
    size = (request.layout.width, request.layout.height)
    steps = int(values["num_inference_steps"])
    strength = float(values["strength"]) if task in ("img2img", "inpaint") and "strength" in values else None
    if strength is not None and int(steps * strength) < 1:
        raise InvalidRequest(
            f"strength {strength:g} with {steps} steps leaves no denoising step: raise num_inference_steps to at "
            f"least {int(1 / strength) + 1 if strength > 0 else 'any value with strength above 0'}.",
            param="strength",
        )
    base_seed = request.seed if request.seed is not None else secrets.randbelow(SEED_RANGE)
    return Job(
        task=task,
        prompt=request.prompt,
        seeds=[(base_seed + i) % SEED_RANGE for i in range(request.n)],
        width=size[0],
        height=size[1],
        steps=steps,
        guidance_scale=float(values["guidance_scale"]),
        negative_prompt=values.get("negative_prompt"),
        strength=strength,
        image_guidance_scale=float(values["image_guidance_scale"]) if task == "instruct" else None,
        image=_rgb(request.images[0], size) if task != "text2image" else None,
        mask=_repaint_mask(request.mask, size) if task == "inpaint" and request.mask is not None else None,
        extra=_pass_through(model, task, request.extra),
    )


def encode_output(output: JobOutput, request: ProviderRequest) -> ProviderResult:
    if output.flagged:
        raise ContentPolicyViolation(
            "The local model's safety checker flagged the generated image.", code="content_policy_violation"
        )
    fmt = request.output_format or "png"
    images = [
        ProviderImage(
            imaging.ImageBytes(imaging.encode(img, fmt, request.output_compression)), imaging.MIME_BY_FORMAT[fmt]
        )
        for img in output.images
    ]
    return ProviderResult(images)
