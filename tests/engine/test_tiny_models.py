"""The tiny pipeline builders: every kind loads back offline and renders, seeds reproduce, the fake hub cache resolves."""

from __future__ import annotations

import warnings
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import constants as hub_constants
from PIL import Image
from transformers import CLIPTokenizer

from .tiny_models import (
    NUMPY_ARRAY_COPY_WARNING,
    PIPELINES,
    SCHEDULERS,
    build_fake_hub_cache,
    build_tiny_pipeline,
    write_tiny_clip_tokenizer,
)

# Euler's set_timesteps calls np.array(tensor), which numpy 2.4 flags for torch's Tensor.__array__ (see tiny_models).
pytestmark = pytest.mark.filterwarnings(NUMPY_ARRAY_COPY_WARNING)


SAVED = {"model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"}


def load(path: Path | str, **kwargs: object) -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe: DiffusionPipeline, kind: str, size: int | None = None, seed: int = 0) -> np.ndarray:
    side = size or 32
    inputs: dict[str, object] = {"num_inference_steps": 2, "guidance_scale": 0.0}
    if kind != "text2image":
        inputs["image"] = Image.new("RGB", (side, side), (200, 30, 30))
    if kind == "inpaint":
        inputs["mask_image"] = Image.new("L", (side, side), 255)
    if kind == "instruct":
        inputs["image_guidance_scale"] = 1.0  # its output takes the input image's size: no height/width
    elif size is not None:
        inputs.update(height=size, width=size)
    image = pipe("a red cat", generator=torch.Generator().manual_seed(seed), **inputs).images[0]
    return np.asarray(image)


def test_tokenizer_is_generated(tmp_path: Path) -> None:
    assert write_tiny_clip_tokenizer(tmp_path) == 190
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)
    ids = tokenizer("A cat, on a mat!", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("size", [None, 64])
@pytest.mark.parametrize("kind", list(PIPELINES))
def test_each_kind_loads_and_renders(tmp_path: Path, kind: str, size: int | None) -> None:
    path = build_tiny_pipeline(tmp_path / "model", kind)
    assert {entry.name for entry in path.iterdir()} == SAVED
    pipe = load(path, local_files_only=True)
    assert type(pipe) is PIPELINES[kind][0]
    assert pipe.unet.config.in_channels == PIPELINES[kind][1] and pipe.vae_scale_factor == 2
    assert render(pipe, kind, size).shape == (size or 32, size or 32, 3)


def test_same_seed_same_weights_and_pixels(tmp_path: Path) -> None:
    first, second, other = (
        build_tiny_pipeline(tmp_path / name, seed=seed) for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    )
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes() != (other / weights).read_bytes()
    pixels = render(load(first), "text2image", seed=3)
    assert np.array_equal(pixels, render(load(second), "text2image", seed=3))
    assert not np.array_equal(pixels, render(load(other), "text2image", seed=3))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedulers(tmp_path: Path, name: str) -> None:
    pipe = load(build_tiny_pipeline(tmp_path / "model", scheduler=name), local_files_only=True)
    assert type(pipe.scheduler) is SCHEDULERS[name][0] and pipe.scheduler.config.steps_offset == 1
    assert render(pipe, "text2image").shape == (32, 32, 3)


def test_ddim_build_load_and_render_warn_not_at_all(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no exception for the numpy one: DDIM never converts a tensor with np.array
        pipe = load(build_tiny_pipeline(tmp_path / "model", "inpaint", scheduler="ddim"), local_files_only=True)
        render(pipe, "inpaint")


def test_fake_hub_cache_resolves_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = build_tiny_pipeline(tmp_path / "source", "inpaint")
    cache = tmp_path / "hub"
    snapshot = build_fake_hub_cache(cache, "tiny-org/tiny-inpaint", source)
    assert snapshot == cache / "models--tiny-org--tiny-inpaint" / "snapshots" / ("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads both variables once, at import, into huggingface_hub.constants, and every call looks them
    # up there (is_offline_mode() returns constants.HF_HUB_OFFLINE); it was imported long before this test set them.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    assert huggingface_hub.snapshot_download("tiny-org/tiny-inpaint") == str(snapshot)
    assert huggingface_hub.hf_hub_download("tiny-org/tiny-inpaint", "model_index.json") == str(
        snapshot / "model_index.json"
    )
    # Offline, diffusers first tries the Hub, logs that it could not, then falls back to the cache.
    assert Path(DiffusionPipeline.download("tiny-org/tiny-inpaint")) == snapshot
    pipe = load("tiny-org/tiny-inpaint")
    assert type(pipe) is PIPELINES["inpaint"][0]
    assert render(pipe, "inpaint").shape == (32, 32, 3)
    assert [repo.repo_id for repo in huggingface_hub.scan_cache_dir(cache).repos] == ["tiny-org/tiny-inpaint"]
