"""A local checkpoint as a catalog entry: read its JSON configs (no torch, no weights) and say
which tasks it serves, at which sizes, with which parameters.

A source is a directory in diffusers format or a Hugging Face hub id ("org/name"), which is
resolved through the normal hub cache (so HF_HUB_OFFLINE and HF_HOME apply). Only the config
files are fetched here; `loader` fetches the weights, with progress bars, when the engine starts.

Kinds of checkpoint, from `model_index.json` and the denoiser's input channels:
- text2image (4 latent channels): text-to-image, prompt edits (img2img) and masked edits
  (inpainting) from the same weights;
- inpaint (9 channels): edits that need a mask;
- instruct (InstructPix2Pix, 8 channels): instruction edits; a mask is applied by the gateway.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..errors import ImagegateError

Kind = Literal["text2image", "inpaint", "instruct"]
LOCAL_MODEL_ENV = "IMAGEGATE_LOCAL_MODEL"  # the variable that serves a local model
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?\Z")
# The denoiser of each family, and whether it packs latents in 2x2 patches (sizes then need
# twice the VAE's multiple).
_DENOISERS = (("unet", False), ("transformer", True))


class LocalModelError(ImagegateError):
    """A configured local model that cannot be read or loaded: a configuration problem."""

    default_code = "local_model_error"


@dataclass(frozen=True)
class Checkpoint:
    source: str  # as configured: a directory or a hub id
    path: Path  # where its config files are (a hub cache snapshot for hub ids)
    is_hub: bool
    pipeline_class: str
    kind: Kind
    native_side: int  # the square size the model was trained at, in pixels
    multiple_of: int  # width and height must be multiples of this


def local_model_id(source: str) -> str:
    """`/models/sd-turbo` and `stabilityai/sd-turbo` are both `local/sd-turbo`."""
    return "local/" + source.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def is_hub_id(source: str) -> bool:
    """Anything that is not an existing directory and reads like `name` or `org/name`."""
    return (
        not Path(source).expanduser().is_dir()
        and not source.startswith((".", "/", "~"))
        and bool(_HUB_ID.match(source))
    )


def _hub_file(repo_id: str, filename: str) -> Path | None:
    """One file of a hub repo through the hub cache; None when the repo has no such file."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError
    except ImportError as exc:
        raise LocalModelError(_install_hint()) from exc
    try:
        return Path(hf_hub_download(repo_id, filename))
    except RemoteEntryNotFoundError:
        return None
    except Exception as exc:  # offline with an empty cache, unknown repo, network down
        raise LocalModelError(
            f"Cannot fetch '{filename}' of the hub model '{repo_id}': {exc}. Download it once with network "
            f"access (it is then served from the Hugging Face cache), or point {LOCAL_MODEL_ENV} at a "
            "directory in diffusers format."
        ) from exc


def _install_hint() -> str:
    return "The local engine needs its extra: pip install -e '.[local]' (or pip install 'imagegate[local]')."


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"Cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def read_checkpoint(source: str) -> Checkpoint:
    """Config files only; raises LocalModelError with a fix when the source is not usable."""
    hub = is_hub_id(source)
    if hub:

        def find(name: str) -> Path | None:
            return _hub_file(source, name)
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise LocalModelError(f"Local model '{source}' is neither a directory nor a hub id ('org/name').")

        def find(name: str) -> Path | None:
            return root / name

    index_path = find("model_index.json")
    index = _read_json(index_path)
    pipeline_class = str(index.get("_class_name", ""))
    if not pipeline_class:
        raise LocalModelError(f"Local model '{source}' has no model_index.json: it is not in diffusers format.")
    assert index_path is not None
    vae = _read_json(find("vae/config.json")) if "vae" in index else {}
    vae_factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    found = next(((folder, packed) for folder, packed in _DENOISERS if folder in index), None)
    if found is None:
        raise LocalModelError(f"Local model '{source}' ({pipeline_class}) has neither a unet nor a transformer.")
    denoiser, packed = _read_json(find(f"{found[0]}/config.json")), found[1]
    sample = denoiser.get("sample_size", 128 if packed else 64)
    sample = sample[0] if isinstance(sample, list) else int(sample)
    # SD-family pipelines insist on multiples of 8 whatever the VAE; packed latents need 2x.
    multiple = vae_factor * 2 if packed else max(8, vae_factor)
    return Checkpoint(
        source=source,
        path=index_path.parent,
        is_hub=hub,
        pipeline_class=pipeline_class,
        kind=_kind(pipeline_class, int(denoiser.get("in_channels", 4))),
        native_side=max(multiple, sample * vae_factor),
        multiple_of=multiple,
    )


def _kind(pipeline_class: str, in_channels: int) -> Kind:
    if "InstructPix2Pix" in pipeline_class or in_channels == 8:
        return "instruct"
    if "Inpaint" in pipeline_class or in_channels == 9:
        return "inpaint"
    return "text2image"


def _template() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("imagegate").joinpath("data/local.json").read_text("utf-8"))
    return data


def _tier(side: float) -> str:
    return f"{side / 1024:g}K"


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def mode_defaults(source: str, template: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Values used for parameters a request leaves out, per mode: the template's defaults,
    overridden by the first preset whose name matches the checkpoint's (turbo: 1 step)."""
    template = template or _template()
    defaults = {mode: dict(values) for mode, values in template["defaults"].items()}
    name = source.lower().rsplit("/", 1)[-1]
    for preset in template["presets"]:
        if preset["name_contains"] in name:
            for mode in defaults:
                defaults[mode].update(preset.get(mode, {}))
            break
    return defaults


def catalog_entry(checkpoint: Checkpoint, model_id: str | None = None) -> dict[str, Any]:
    """A raw catalog entry (the shape of data/models.json) for one local checkpoint."""
    template = _template()
    native, multiple = checkpoint.native_side, checkpoint.multiple_of
    kind = checkpoint.kind
    parameters = {name: dict(spec) for name, spec in template["parameters"].items()}
    if kind != "instruct":
        parameters["image_guidance_scale"].update(edit="not_available")
    else:
        parameters["strength"].update(edit="not_available")
    mask_handling = {"handling": "passthrough", "how": "inpainting with the same weights"}
    if kind == "instruct":
        mask_handling = {"handling": "emulated", "how": "the gateway keeps the original outside the mask"}
    if kind == "inpaint":
        parameters["mask"] = {
            "type": "file",
            "description": "PNG mask whose transparent areas mark where the "
            "image is repainted. This inpainting checkpoint needs one.",
            "t2i": "not_available",
            "edit": "required",
        }
    tiers = [_tier(native / 2), _tier(native), _tier(native * 2)]
    return {
        "id": model_id or local_model_id(checkpoint.source),
        "name": f"{checkpoint.source.rstrip('/').rsplit('/', 1)[-1]} (local)",
        "description": f"{checkpoint.pipeline_class} from {checkpoint.source}, run on this machine by the "
        f"local engine ({kind}).",
        "owned_by": "local",
        "modes": ["t2i", "edit"] if kind == "text2image" else ["edit"],
        "resolution_kind": "k",
        "resolution_tiers": tiers,
        "default_resolution": tiers[1],
        "max_input_images": 1,
        "pixel_limits": {
            "min_side": max(multiple, _round_up(native / 4, multiple)),
            "max_side": native * 2,
            "max_pixels": (native * 2) ** 2,
            "multiple_of": multiple,
        },
        "aspect_ratios": template["aspect_ratios"],
        "price": {"per_image": 0.0},
        "parameters": parameters,
        "providers": {
            "local": {
                "upstream_model": checkpoint.source,
                "max_images_per_call": 10,  # n is one batch
                "native_output_formats": ["png", "jpeg", "webp"],
                "parameters": {"mask": mask_handling},
                "defaults": mode_defaults(checkpoint.source, template),
                "price": {"per_image": 0.0, "source": "made on this machine"},
            }
        },
    }
