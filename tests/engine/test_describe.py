"""A checkpoint's configs become a catalog entry: kinds, sizes, defaults, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants as hub_constants

from imagegate.catalog import parse_entries
from imagegate.config import FileConfig
from imagegate.engine.describe import (
    LocalModelError,
    catalog_entry,
    is_hub_id,
    local_model_id,
    mode_defaults,
    read_checkpoint,
)
from imagegate.gateway import build_catalog, local_sources, read_local_models
from imagegate.normalize import resolve_layout

from .tiny_models import build_fake_hub_cache


@pytest.mark.parametrize(
    ("source", "model_id"),
    [
        ("/models/sd-turbo", "local/sd-turbo"),
        ("stabilityai/sd-turbo", "local/sd-turbo"),
        ("/models/sd-turbo/", "local/sd-turbo"),
        ("sdxl", "local/sdxl"),
    ],
)
def test_model_id_is_the_last_path_component(source: str, model_id: str) -> None:
    assert local_model_id(source) == model_id


def test_hub_ids_and_directories_are_told_apart(tmp_path: Path) -> None:
    assert is_hub_id("stabilityai/sd-turbo")
    assert is_hub_id("sd-turbo")
    assert not is_hub_id("/models/sd-turbo")
    assert not is_hub_id("./sd-turbo")
    assert not is_hub_id("a/b/c")
    (tmp_path / "org").mkdir()
    assert not is_hub_id(str(tmp_path / "org"))


@pytest.mark.parametrize(
    ("kind", "modes"), [("text2image", ["t2i", "edit"]), ("inpaint", ["edit"]), ("instruct", ["edit"])]
)
def test_kind_and_modes_come_from_the_checkpoint(tiny_checkpoints: Any, kind: str, modes: list[str]) -> None:
    checkpoint = read_checkpoint(str(tiny_checkpoints(kind)))
    assert checkpoint.kind == kind
    assert not checkpoint.is_hub
    # Tiny VAE: 2 blocks, scale factor 2; UNet sample size 16 -> 32 px; SD pipelines need multiples of 8.
    assert (checkpoint.native_side, checkpoint.multiple_of) == (32, 8)
    entry = catalog_entry(checkpoint)
    assert entry["modes"] == modes


def test_entry_is_a_valid_flexible_catalog_model(tiny_checkpoints: Any) -> None:
    entry = catalog_entry(read_checkpoint(str(tiny_checkpoints())))
    [model] = parse_entries({"models": [entry]})
    assert model.id == "local/tiny-sd"
    assert model.pixel_limits is not None
    assert model.pixel_limits.multiple_of == 8
    assert model.pixel_limits.max_side == 64
    assert model.providers["local"].upstream_model == str(tiny_checkpoints())
    # Sizes are clamped to the limits keeping the ratio, on the multiple of 8.
    layout = resolve_layout(model, size="1000x500")
    assert (layout.width, layout.height) == (64, 32)
    layout = resolve_layout(model, aspect_ratio="16:9")
    assert layout.width % 8 == 0 and layout.height % 8 == 0 and layout.width > layout.height
    layout = resolve_layout(model)
    assert (layout.width, layout.height) == (32, 32)


def test_instruct_models_take_image_guidance_not_strength(tiny_checkpoints: Any) -> None:
    entry = catalog_entry(read_checkpoint(str(tiny_checkpoints("instruct"))))
    assert entry["parameters"]["image_guidance_scale"]["edit"] == "supported"
    assert entry["parameters"]["strength"]["edit"] == "not_available"
    assert entry["providers"]["local"]["parameters"]["mask"]["handling"] == "emulated"
    sd = catalog_entry(read_checkpoint(str(tiny_checkpoints())))
    assert sd["parameters"]["image_guidance_scale"]["edit"] == "not_available"
    assert sd["parameters"]["strength"]["edit"] == "supported"


def test_inpainting_checkpoints_require_a_mask(tiny_checkpoints: Any) -> None:
    entry = catalog_entry(read_checkpoint(str(tiny_checkpoints("inpaint"))))
    assert entry["parameters"]["mask"]["edit"] == "required"


def test_turbo_checkpoints_get_one_step_defaults() -> None:
    turbo = mode_defaults("stabilityai/sd-turbo")
    assert turbo["t2i"] == {"num_inference_steps": 1, "guidance_scale": 0.0}
    # img2img with a turbo model needs steps * strength >= 1.
    assert turbo["edit"]["num_inference_steps"] * turbo["edit"]["strength"] >= 1
    plain = mode_defaults("/models/stable-diffusion-2-1")
    assert plain["t2i"]["num_inference_steps"] > 1 and plain["t2i"]["guidance_scale"] > 1


def test_hub_ids_resolve_through_the_cache_offline(
    tiny_checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = build_fake_hub_cache(tmp_path / "hub", "acme/tiny-sd-turbo", tiny_checkpoints())
    # huggingface_hub reads these once, at import: patch what it reads at call time too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    checkpoint = read_checkpoint("acme/tiny-sd-turbo")
    assert checkpoint.is_hub
    assert checkpoint.path == snapshot
    entry = catalog_entry(checkpoint)
    assert entry["id"] == "local/tiny-sd-turbo"
    assert entry["providers"]["local"]["defaults"]["t2i"]["num_inference_steps"] == 1


def test_an_uncached_hub_id_offline_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(LocalModelError, match="acme/missing") as info:
        read_checkpoint("acme/missing")
    assert "IMAGEGATE_LOCAL_MODEL" in info.value.message


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match="neither a directory nor a hub id"):
        read_checkpoint(str(tmp_path / "nope"))


def test_a_directory_not_in_diffusers_format_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"\0")
    with pytest.raises(LocalModelError, match="not in diffusers format"):
        read_checkpoint(str(tmp_path))


def test_a_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(LocalModelError, match="Cannot read"):
        read_checkpoint(str(tmp_path))


def test_transformer_checkpoints_use_packed_multiples(tmp_path: Path) -> None:
    """Flux-style checkpoints pack latents in 2x2 patches: sizes are multiples of 16."""
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "FluxPipeline",
                "transformer": ["diffusers", "FluxTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        )
    )
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"in_channels": 64}))
    checkpoint = read_checkpoint(str(tmp_path))
    assert (checkpoint.kind, checkpoint.multiple_of, checkpoint.native_side) == ("text2image", 16, 1024)


def test_config_file_local_models_and_the_environment_add_up(tiny_checkpoints: Any) -> None:
    sd, pix2pix = str(tiny_checkpoints()), str(tiny_checkpoints("instruct"))
    file_config = FileConfig(local_models=[pix2pix, sd])
    catalog = build_catalog(file_config, read_local_models(file_config, local_model=sd))
    assert catalog.get("local/tiny-sd") is not None and catalog.get("local/tiny-pix2pix") is not None
    assert local_sources(catalog) == [pix2pix, sd]  # each source once: one load each


def test_a_full_config_entry_wins_over_the_described_one(tiny_checkpoints: Any) -> None:
    entry = catalog_entry(read_checkpoint(str(tiny_checkpoints())))
    entry["name"] = "My tiny model"
    file_config = FileConfig(models=[entry])
    assert read_local_models(file_config, local_model=str(tiny_checkpoints())) == []  # not even read
    catalog = build_catalog(file_config, read_local_models(file_config, local_model=str(tiny_checkpoints())))
    model = catalog.get("local/tiny-sd")
    assert model is not None and model.name == "My tiny model"
