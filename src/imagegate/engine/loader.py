"""A checkpoint -> pipelines on the best device, loaded once.

1. Weights: a directory is used as it is; a hub id is fetched into the Hugging Face cache
   (with progress bars; HF_HUB_OFFLINE=1 serves it from the cache only).
2. Device: CUDA, then Apple's MPS, then the CPU; dtype float16 on accelerators, float32 on
   the CPU (where half precision is slow or unsupported). Both can be forced.
3. Serving settings per device (on the CPU the VAE decodes one image at a time).
4. Pipelines: the checkpoint's own pipeline, plus img2img and inpainting views of it made with
   `from_pipe`, which share the loaded modules (no second copy of the weights).
"""

from __future__ import annotations

import inspect
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline

from .describe import Checkpoint, LocalModelError

Task = Literal["text2image", "img2img", "inpaint", "instruct"]
SCALARS: tuple[type, ...] = (bool, int, float, str)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    if requested != "auto":
        if requested not in DTYPES:
            raise LocalModelError(f"IMAGEGATE_LOCAL_DTYPE must be auto or one of {', '.join(DTYPES)}.")
        return DTYPES[requested]
    return torch.float32 if device == "cpu" else torch.float16


def generator_device(device: str) -> str:
    """Seeded noise is drawn where it is reproducible: MPS generators are not, so MPS draws on
    the CPU (diffusers moves the noise over)."""
    return "cpu" if device.startswith("mps") else device


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    base: Any  # DiffusionPipeline; diffusers is untyped
    device: str
    dtype: torch.dtype
    _views: dict[Task, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pipeline(self, task: Task) -> Any:
        """The pipeline for a task, made from the base on first use."""
        with self._lock:
            if task not in self._views:
                self._views[task] = self._make(task)
            return self._views[task]

    def _make(self, task: Task) -> Any:
        kind = self.checkpoint.kind
        if task == "text2image" and kind == "text2image":
            return self.base
        if task == "instruct" and kind == "instruct":
            return self.base
        if task == "inpaint" and kind == "inpaint":
            return self.base
        if kind == "text2image" and task in ("img2img", "inpaint"):
            auto = AutoPipelineForImage2Image if task == "img2img" else AutoPipelineForInpainting
            view = auto.from_pipe(self.base)
            view.set_progress_bar_config(disable=True)
            return view
        raise LocalModelError(f"'{self.checkpoint.source}' ({kind}) cannot run {task}.")

    def accepts(self, task: Task, argument: str) -> bool:
        return argument in inspect.signature(self.pipeline(task).__call__).parameters

    def scalar_type(self, task: Task, argument: str) -> type | None:
        """bool, int, float or str when the pipeline takes `argument` as that plain value (from its
        default, else its annotation); None when it does not take it, or not as a plain value."""
        parameter = inspect.signature(self.pipeline(task).__call__).parameters.get(argument)
        if parameter is None:
            return None
        default = parameter.default
        if default is not None and default is not inspect.Parameter.empty:
            return type(default) if type(default) in SCALARS else None
        annotation = parameter.annotation
        options = typing.get_args(annotation) or (annotation,)
        found = [t for t in SCALARS if t in options]
        return found[0] if len(found) == 1 else None  # "int | str" is ambiguous: not a plain value


def weights_path(checkpoint: Checkpoint) -> str:
    if not checkpoint.is_hub:
        return str(checkpoint.path)
    try:
        # Only the files the pipeline needs, into the normal hub cache, with progress bars.
        from huggingface_hub import constants

        # Offline, go straight to the cache instead of trying the network first.
        return str(DiffusionPipeline.download(checkpoint.source, local_files_only=constants.HF_HUB_OFFLINE))
    except Exception as exc:
        raise LocalModelError(f"Cannot download the weights of '{checkpoint.source}': {exc}") from exc


def load_model(checkpoint: Checkpoint, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Blocking (seconds to minutes): run it in a worker thread."""
    path = weights_path(checkpoint)
    chosen = pick_device(device)
    torch_dtype = pick_dtype(dtype, chosen)
    try:
        pipe = DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            path, dtype=torch_dtype, local_files_only=True
        )
        pipe.to(chosen)
    except Exception as exc:
        raise LocalModelError(f"Cannot load the local model '{checkpoint.source}': {exc}") from exc
    prepare_for_serving(pipe, chosen)
    return LoadedModel(checkpoint, pipe, chosen, torch_dtype)


def prepare_for_serving(pipe: Any, device: str) -> None:
    """Settings for a pipeline that serves batches.

    On the CPU the VAE decodes a batch one image at a time: the decoder is compute-bound there
    and a batch only spills the caches (measured with sd-turbo's VAE at 128 px on 2 cores: 0.91 s
    per image alone, 1.10 s per image in a batch of 16), while the text encoder and UNet do
    gain from batching. Accelerators decode the batch at once.
    """
    pipe.set_progress_bar_config(disable=True)
    vae = getattr(pipe, "vae", None)
    if device == "cpu" and vae is not None and hasattr(vae, "enable_slicing") and hasattr(vae, "use_slicing"):
        vae.enable_slicing()
