"""Tiny randomly initialised Stable Diffusion pipelines, saved in diffusers format, for offline engine tests.

This mirrors the ``get_dummy_components`` helpers in diffusers' own pipeline tests: the same component classes
with the smallest configs that still run, so a pipeline loads with ``DiffusionPipeline.from_pretrained`` and renders
a 32x32 image in milliseconds on CPU. Nothing is fetched: the CLIP tokenizer's vocabulary is generated here.
Weights are seeded, so the same ``seed`` gives identical files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
NATIVE_SIZE = 32  # pixels: the VAE's sample_size; the UNet works on 16x16 latents (vae_scale_factor 2)

PIPELINES: dict[str, tuple[type[DiffusionPipeline], int]] = {
    "text2image": (StableDiffusionPipeline, 4),
    "inpaint": (StableDiffusionInpaintPipeline, 9),  # latents + mask + masked-image latents
    "instruct": (StableDiffusionInstructPix2PixPipeline, 8),  # latents + input-image latents
}
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),  # clip_sample=True: FutureWarning
    "dpmpp": (DPMSolverMultistepScheduler, {}),
}
# With numpy >= 2.4 and torch's Tensor.__array__(dtype=None) (no ``copy``), every np.array(tensor) warns. The
# Euler and DPM-Solver schedulers do that in set_timesteps (Euler ancestral in __init__ too); no config avoids it.
# A pytest filter for it: pytest.mark.filterwarnings(NUMPY_ARRAY_COPY_WARNING).
NUMPY_ARRAY_COPY_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"


def write_tiny_clip_tokenizer(directory: Path) -> int:
    """Write vocab.json and merges.txt of a byte-level CLIP BPE with one token per printable ASCII char; return its size."""
    chars = [chr(code) for code in range(33, 127)]
    tokens = chars + [char + "</w>" for char in chars] + [BOS, EOS]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(tokens)


def build_tiny_pipeline(path: Path, kind: str = "text2image", seed: int = 0, scheduler: str = "euler") -> Path:
    """Save a tiny ``kind`` pipeline ("text2image", "inpaint" or "instruct") to ``path``; return ``path``."""
    pipeline_class, in_channels = PIPELINES[kind]
    scheduler_class, scheduler_options = SCHEDULERS[scheduler]
    with tempfile.TemporaryDirectory() as scratch:  # save_pretrained writes the tokenizer into path/tokenizer
        write_tiny_clip_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer(
            str(Path(scratch, "vocab.json")), str(Path(scratch, "merges.txt")), model_max_length=77
        )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 2,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=NATIVE_SIZE,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            projection_dim=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    with warnings.catch_warnings():  # Euler ancestral's __init__ converts a tensor with np.array: see above
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        noise_scheduler = scheduler_class(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="trailing",
            steps_offset=1,  # any other value: a FutureWarning each time the pipeline is built or loaded
            **scheduler_options,
        )
    pipeline = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=noise_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,  # saved in model_index.json, so loading does not log about it either
    )
    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # transformers' save_pretrained prints "Writing model shards" bars
    try:
        pipeline.save_pretrained(path)
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()
    return path


def build_fake_hub_cache(cache_dir: Path, repo_id: str, source: Path, revision: str = "0" * 40) -> Path:
    """Lay ``source`` out as the cached snapshot of model repo ``repo_id`` at commit ``revision``; return the snapshot.

    Offline, huggingface_hub maps a branch name to a commit through ``refs/<branch>`` and serves files straight from
    ``snapshots/<commit>/``. Blobs are not needed: plain files in the snapshot are what it writes where symlinks are
    unavailable, and no tree listing (``trees/<commit>.json``) means the snapshot is taken as complete.
    """
    repo_folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / revision
    shutil.copytree(source, snapshot)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / "main").write_text(revision, encoding="utf-8")  # read back without strip(): no newline
    return snapshot
