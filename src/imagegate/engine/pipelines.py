"""Jobs and the one pipeline call that serves a batch of them.

A `Job` is one request's images: one prompt, one seed per image, one set of settings. Jobs
with the same `batch_key` can share a forward pass: their prompts, seeds, input images and
masks become per-image lists, so each image is exactly what it would be on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .loader import LoadedModel, Task, generator_device


@dataclass(eq=False)
class Job:
    task: Task
    prompt: str
    seeds: list[int]
    width: int
    height: int
    steps: int
    guidance_scale: float
    negative_prompt: str | None = None
    strength: float | None = None
    image_guidance_scale: float | None = None
    image: Image.Image | None = None  # RGB, already at width x height
    mask: Image.Image | None = None  # "L", white where the image is repainted
    extra: dict[str, Any] = field(default_factory=dict)  # passed-through pipeline arguments

    @property
    def count(self) -> int:
        return len(self.seeds)

    def batch_key(self) -> tuple[Any, ...]:
        """Everything a forward pass shares; prompts, seeds and input images may differ."""
        return (
            self.task,
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.strength,
            self.image_guidance_scale,
            tuple(sorted(self.extra.items())),
        )


@dataclass
class JobOutput:
    images: list[Image.Image]
    flagged: bool = False  # the checkpoint's own safety checker blanked an image


def _per_image(jobs: list[Job], value: Callable[[Job], Any]) -> list[Any]:
    return [value(job) for job in jobs for _ in job.seeds]


def pipeline_arguments(model: LoadedModel, jobs: list[Job]) -> dict[str, Any]:
    """The keyword arguments of one call for `jobs` (all with the same batch key)."""
    first = jobs[0]
    device = generator_device(model.device)
    arguments: dict[str, Any] = {
        # 1. Per image: prompt and a generator seeded with that image's own seed.
        "prompt": _per_image(jobs, lambda j: j.prompt),
        "generator": [torch.Generator(device).manual_seed(seed) for job in jobs for seed in job.seeds],
        # 2. Shared settings.
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance_scale,
        "output_type": "pil",
    }
    if any(job.negative_prompt for job in jobs):
        arguments["negative_prompt"] = _per_image(jobs, lambda j: j.negative_prompt or "")
    # 3. Task inputs: images (and masks) are per image too.
    if first.task in ("text2image", "inpaint"):
        arguments.update(height=first.height, width=first.width)
    if first.task != "text2image":
        arguments["image"] = _per_image(jobs, lambda j: j.image)
    if first.task == "inpaint":
        arguments["mask_image"] = _per_image(jobs, lambda j: j.mask)
    if first.strength is not None and first.task in ("img2img", "inpaint"):
        arguments["strength"] = first.strength
    if first.task == "instruct" and first.image_guidance_scale is not None:
        arguments["image_guidance_scale"] = first.image_guidance_scale
    arguments.update(first.extra)
    return arguments


def run_batch(model: LoadedModel, jobs: list[Job], should_stop: Callable[[], bool]) -> list[JobOutput]:
    """One forward pass for `jobs`; blocking, on the engine's thread. `should_stop` is polled
    after each step: when every job of the batch was cancelled, the loop is cut short."""
    pipe = model.pipeline(jobs[0].task)
    arguments = pipeline_arguments(model, jobs)
    if model.accepts(jobs[0].task, "callback_on_step_end"):

        def stop_when_abandoned(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if should_stop():
                pipe._interrupt = True  # diffusers' own early exit: the step loop skips the rest
            return tensors

        arguments["callback_on_step_end"] = stop_when_abandoned
    with torch.inference_mode():
        result = pipe(**arguments)
    images: list[Image.Image] = list(result.images)
    flags = list(getattr(result, "nsfw_content_detected", None) or [False] * len(images))
    outputs, start = [], 0
    for job in jobs:
        end = start + job.count
        outputs.append(JobOutput(images[start:end], any(bool(f) for f in flags[start:end])))
        start = end
    return outputs
