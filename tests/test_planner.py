"""The planner: one meaning for a binding's `to` (wire.py), each provider's complete view of a
request (params.provider_views, its WirePlan on the ProviderRequest), binding defaults, and the
catalog's cross-model checks at load time. Pure, no servers, except a Gateway that must not start."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from imagegate import wire
from imagegate.catalog import (
    Catalog,
    ModelEntry,
    ParamHandlingSpec,
    builtin_data,
    check,
    load_builtin_catalog,
    parse_entries,
)
from imagegate.config import FileConfig
from imagegate.errors import ConfigurationError, InvalidRequest, UnsupportedParameter
from imagegate.gateway import Gateway, build_catalog
from imagegate.normalize import resolve_layout
from imagegate.params import ParamFate, WirePlan, coerce_scalar, normalize_params, provider_views
from imagegate.plugins import DEFAULT_PLUGINS, ProviderRegistry, ProviderSpec, load_registry
from imagegate.providers import ProviderRequest
from imagegate.providers.fal import build_input as fal_input
from imagegate.providers.gemini import build_body
from imagegate.providers.openai import build_fields
from imagegate.providers.replicate import build_input as replicate_input

from .conftest import make_settings

CATALOG = load_builtin_catalog()
KNOWN = [*(spec.id for spec in load_registry()), "local"]
DEFAULTS = builtin_data()["default_parameters"]


def model(model_id: str) -> ModelEntry:
    entry = CATALOG.get(model_id)
    assert entry is not None
    return entry


PRO = model("gemini-3-pro-image-preview")


def raw_model(**changes: Any) -> dict[str, Any]:
    """A small config-file model; `changes` replace its fields."""
    raw: dict[str, Any] = {
        "id": "custom",
        "name": "Custom",
        "modes": ["t2i"],
        "resolution_tiers": ["1K"],
        "default_resolution": "1K",
        "sizes": [
            {"aspect_ratio": "1:1", "resolution": "1K", "width": 1024, "height": 1024},
            {"aspect_ratio": "16:9", "resolution": "1K", "width": 1344, "height": 768},
        ],
        "price": {"per_image": 0.01},
        "parameters": {},
        "providers": {"openai": {"upstream_model": "u"}},
    }
    return {**raw, **changes}


def entry(**changes: Any) -> ModelEntry:
    (parsed,) = parse_entries({"models": [raw_model(**changes)]}, DEFAULTS)
    return parsed


# --- `to`: paths, checked at load --------------------------------------------------------------


@pytest.mark.parametrize(
    "to",
    [
        "generationConfig.seed",
        "input.seed",
        "safety_tolerance",
        "image[]",
        "contents[0].parts[0].text",
        "input.size + input.width + input.height",
    ],
)
def test_well_formed_paths_load(to: str) -> None:
    assert ParamHandlingSpec(handling="converted", to=to).paths == tuple(p.strip() for p in to.split("+"))


@pytest.mark.parametrize("to", ["sent as the width", "input..seed", "input.seed.", "a + a", "x[y]", "1st"])
def test_prose_and_broken_paths_are_refused_when_the_catalog_loads(to: str) -> None:
    with pytest.raises(ValidationError):
        ParamHandlingSpec(handling="converted", to=to)
    binding = {"upstream_model": "u", "parameters": {"size": {"handling": "converted", "to": to}}}
    with pytest.raises(ValidationError, match="to"):
        entry(providers={"openai": binding})


def test_a_list_of_paths_is_the_same_as_joined_paths() -> None:
    listed = ParamHandlingSpec(handling="converted", to=["input.width", "input.height"])
    assert listed == ParamHandlingSpec(handling="converted", to="input.width + input.height")
    assert listed.to == "input.width + input.height" and listed.paths == ("input.width", "input.height")


def test_place_writes_plain_paths_and_leaves_lists_to_the_adapter() -> None:
    body: dict[str, Any] = {"generationConfig": {"responseModalities": ["IMAGE"]}}
    wire.place(body, "generationConfig.imageConfig.aspectRatio", "16:9")
    wire.place(body, "seed", 3)
    assert body == {
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9"}},
        "seed": 3,
    }
    with pytest.raises(ValueError, match="indexes a list"):
        wire.place(body, "contents[0].parts[0].text", "p")
    assert wire.reserved_prefix("contents[0].parts[0].text") == ("contents",)
    assert wire.reserved_prefix("generationConfig.seed") == ("generationConfig", "seed")


# --- each provider's view ------------------------------------------------------------------------


def views(raw: dict[str, Any], entry_: ModelEntry = PRO, *, strict: bool = False, mode: str = "t2i") -> Any:
    params = normalize_params(raw, model=entry_, mode="edit" if mode == "edit" else "t2i", strict=strict)
    return provider_views(params, entry_, entry_.providers, strict=strict)


def test_the_view_says_what_happens_to_each_given_parameter() -> None:
    fal = views(
        {
            "prompt": "p",
            "seed": 5,
            "n": 2,
            "aspect_ratio": "16:9",
            "user": "u",
            "safety_filter_level": "block_only_high",
            "temperature": 0.3,
        }
    )["fal"]
    assert fal.fates["seed"] == ParamFate("passthrough", ("seed",))
    assert fal.fates["n"] == ParamFate("renamed", ("num_images",))
    assert fal.fates["aspect_ratio"] == ParamFate("converted", ("aspect_ratio",))
    assert fal.fates["user"] == ParamFate("emulated")
    assert fal.fates["safety_filter_level"] == ParamFate("not_applied")  # replicate honours it; fal cannot
    assert fal.fates["temperature"] == ParamFate("extra", ("temperature",))
    assert "safety_filter_level" not in fal.options


def test_the_view_carries_upstream_ids_call_size_formats_and_the_mask_decision() -> None:
    both = views({"prompt": "p", "output_format": "webp"}, mode="edit")
    fal, replicate, gemini = both["fal"], both["replicate"], both["gemini"]
    assert (fal.plan.upstream_for("t2i"), fal.plan.upstream_for("edit")) == (
        "fal-ai/nano-banana-pro",
        "fal-ai/nano-banana-pro/edit",
    )
    assert (fal.plan.max_images_per_call, replicate.plan.max_images_per_call) == (4, 1)
    assert fal.native_output_format == "webp"  # fal makes webp itself
    assert replicate.native_output_format is None and gemini.native_output_format is None  # converted later
    assert fal.mask_emulated and gemini.mask_emulated and not both["openai"].mask_emulated


def test_what_no_provider_honours_is_refused_in_the_one_decision() -> None:
    only_fal = PRO.model_copy(update={"providers": {"fal": PRO.providers["fal"]}})
    with pytest.raises(UnsupportedParameter) as info:
        views({"prompt": "p", "safety_filter_level": "block_only_high"}, only_fal)
    assert info.value.param == "safety_filter_level"


def test_adapters_place_values_where_the_plan_says_not_where_the_catalog_does() -> None:
    """A plan that differs from the built-in binding is what reaches the wire."""
    layout = resolve_layout(PRO, aspect_ratio="16:9", resolution="2K")
    moved = {
        "seed": ParamHandlingSpec(handling="renamed", to="input.noise_seed"),
        "aspect_ratio": ParamHandlingSpec(handling="converted", to="input.shape.ratio"),
    }
    replicate = WirePlan.from_binding(PRO.providers["replicate"])
    plan = WirePlan(upstream_model="x/y", handlings={**replicate.handlings, **moved})
    body = replicate_input(ProviderRequest(mode="t2i", prompt="p", layout=layout, plan=plan, seed=7))
    assert body["noise_seed"] == 7 and body["shape"] == {"ratio": "16:9"} and "aspect_ratio" not in body

    gemini = WirePlan.from_binding(PRO.providers["gemini"])
    plan = WirePlan(
        upstream_model="g", handlings={**gemini.handlings, "resolution": ParamHandlingSpec(handling="emulated")}
    )
    config = build_body(ProviderRequest(mode="t2i", prompt="p", layout=layout, plan=plan))["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "16:9"}  # an emulated resolution is not sent
    moved = {
        "enable_web_search": ParamHandlingSpec(handling="emulated"),
        "safety_tolerance": ParamHandlingSpec(handling="converted", to="generationConfig.safety"),
    }
    plan = WirePlan(upstream_model="g", handlings={**gemini.handlings, **moved})
    options = {"enable_web_search": True, "safety_tolerance": "6"}
    body = build_body(ProviderRequest(mode="t2i", prompt="p", layout=layout, plan=plan, options=options))
    assert "tools" not in body and "safetySettings" not in body
    assert {s["threshold"] for s in body["generationConfig"]["safety"]} == {"BLOCK_ONLY_HIGH"}

    fal = WirePlan.from_binding(PRO.providers["fal"])
    plan = WirePlan(
        upstream_model="f", handlings={**fal.handlings, "n": ParamHandlingSpec(handling="renamed", to="batch.size")}
    )
    assert fal_input(ProviderRequest(mode="t2i", prompt="p", layout=layout, plan=plan, n=3))["batch"] == {"size": 3}

    openai = WirePlan.from_binding(PRO.providers["openai"])
    plan = WirePlan(
        upstream_model="o",
        handlings={**openai.handlings, "response_format": ParamHandlingSpec(handling="emulated", to="response_format")},
    )
    fields = build_fields(ProviderRequest(mode="t2i", prompt="p", layout=layout, plan=plan))
    assert fields["model"] == "o" and fields["response_format"] == "b64_json"


def test_a_request_takes_a_binding_or_a_plan_and_always_has_a_plan() -> None:
    layout = resolve_layout(PRO)
    by_binding = ProviderRequest(mode="edit", prompt="p", layout=layout, binding=PRO.providers["fal"])
    assert by_binding.plan == WirePlan.from_binding(PRO.providers["fal"])
    assert by_binding.upstream_model == "fal-ai/nano-banana-pro/edit"
    with pytest.raises(TypeError, match="plan"):
        ProviderRequest(mode="t2i", prompt="p", layout=layout)


@pytest.mark.parametrize(
    ("raw", "wanted", "typed"), [("2.0", int, 2), ("0.5", float, 0.5), ("on", bool, True), (7, str, "7")]
)
def test_pass_through_values_are_typed_by_the_same_rules_as_parameters(raw: Any, wanted: type, typed: Any) -> None:
    value = coerce_scalar("eta", raw, wanted)
    assert value == typed and type(value) is wanted


@pytest.mark.parametrize(
    ("raw", "wanted"), [("2.5", int), (True, float), ("inf", float), ("maybe", bool), ([1], str), (1, list)]
)
def test_pass_through_values_of_the_wrong_kind_are_400s(raw: Any, wanted: type) -> None:
    with pytest.raises(InvalidRequest) as info:
        coerce_scalar("eta", raw, wanted)
    assert info.value.param == "eta"


# --- binding defaults ------------------------------------------------------------------------------


def test_binding_defaults_fill_in_only_what_a_binding_leaves_out() -> None:
    defaults = {
        "openai": {
            "max_images_per_call": 10,
            "parameters": {"user": {"handling": "emulated", "how": "recorded"}, "seed": {"handling": "not_available"}},
        }
    }
    binding = {"upstream_model": "u", "parameters": {"seed": {"handling": "passthrough", "to": "seed"}}}
    (parsed,) = parse_entries(
        {"binding_defaults": defaults, "models": [raw_model(providers={"openai": binding})]}, DEFAULTS
    )
    openai = parsed.providers["openai"]
    assert openai.max_images_per_call == 10
    assert openai.parameters["user"] == ParamHandlingSpec(handling="emulated", how="recorded")
    assert openai.parameters["seed"] == ParamHandlingSpec(handling="passthrough", to="seed")  # replaced whole
    (bare,) = parse_entries({"models": [raw_model(providers={"openai": binding})]}, DEFAULTS)
    assert bare.providers["openai"].max_images_per_call == 1 and "user" not in bare.providers["openai"].parameters


def test_built_in_bindings_list_only_what_differs_from_their_defaults() -> None:
    data = builtin_data()
    defaults = data["binding_defaults"]
    for raw in data["models"]:
        for provider_id, binding in raw["providers"].items():
            shared = defaults.get(provider_id, {}).get("parameters", {})
            repeated = [n for n, spec in binding.get("parameters", {}).items() if shared.get(n) == spec]
            assert not repeated, f"{raw['id']}/{provider_id} repeats its defaults for {repeated}"
    flash = model("gemini-2.5-flash-image")
    resolution = [m.providers["gemini"].handling("resolution") for m in (PRO, flash)]
    assert [h.handling if h else None for h in resolution] == ["converted", "emulated"]  # the binding's own wins
    assert all(m.providers["gemini"].handling("user") is not None for m in (PRO, flash))  # from the defaults


# --- cross-model checks -----------------------------------------------------------------------------


def test_the_built_in_catalog_passes_its_checks() -> None:
    check(load_builtin_catalog(), KNOWN)


def test_check_lists_every_problem_at_once() -> None:
    bad = entry(
        id="bad",
        fallback_model="nowhere",
        providers={"acme": {"upstream_model": "u"}},
        resolution_tiers=["1K", "2K"],
        default_aspect_ratio="4:3",
        sizes=[
            {"aspect_ratio": "1:1", "resolution": "1K", "width": 1024, "height": 1024},
            {"aspect_ratio": "16:9", "resolution": "1K", "width": 1024, "height": 1000},
            {"aspect_ratio": "1:1", "resolution": "4K", "width": 4096, "height": 4096},
        ],
    )
    with pytest.raises(ConfigurationError) as info:
        check(Catalog([*CATALOG, bad]), KNOWN)
    message = info.value.message
    for expected in (
        "model bad: fallback_model 'nowhere' is not in the catalog",
        "unknown provider 'acme'",
        "default_aspect_ratio 4:3 is not among its ratios",
        "16:9 1K (1024x1000) is more than 3% off",
        "tier 4K is not in resolution_tiers",
        "tier 2K has no row in sizes",
    ):
        assert expected in message, message
    assert "gemini-3-pro-image-preview" not in message  # only the bad model is named


def test_a_model_may_not_fall_back_to_itself_or_to_one_that_cannot_do_its_work() -> None:
    itself = entry(id="loop", fallback_model="loop")
    edits = entry(id="edits", modes=["t2i", "edit"], fallback_model="custom")
    with pytest.raises(ConfigurationError) as info:
        check(Catalog([entry(), itself, edits]), KNOWN)
    assert "model loop: fallback_model 'loop' is the model itself" in info.value.message
    assert "model edits: fallback_model custom does not serve every mode" in info.value.message


def write_model(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "imagegate.toml"
    path.write_text(f"""
[[models]]
id = "tiny"
name = "Tiny"
modes = ["t2i"]
resolution_tiers = ["1K"]
default_resolution = "1K"
price = {{ per_image = 0.01 }}
{body}
[models.parameters.prompt]
type = "string"
description = "prompt"
t2i = "required"
edit = "not_available"
""")
    return path


ROW = '{ aspect_ratio = "1:1", resolution = "1K", width = 1024, height = 1024 }'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            f'fallback_model = "no-such-model"\nsizes = [{ROW}]\n[models.providers.openai]\nupstream_model = "u"',
            "model tiny: fallback_model 'no-such-model' is not in the catalog",
        ),
        (f'sizes = [{ROW}]\n[models.providers.acme]\nupstream_model = "u"', "model tiny: unknown provider 'acme'"),
        (
            f'sizes = [{ROW}, {{ aspect_ratio = "16:9", resolution = "1K", width = 1024, height = 1024 }}]\n'
            '[models.providers.openai]\nupstream_model = "u"',
            "model tiny: size 16:9 1K (1024x1024) is more than",
        ),
    ],
)
def test_a_config_file_model_with_cross_model_problems_stops_the_start(tmp_path: Path, body: str, message: str) -> None:
    settings = make_settings(tmp_path, config=write_model(tmp_path, body))
    with pytest.raises(ConfigurationError, match="The model catalog is inconsistent") as info:
        Gateway(settings)
    assert message in info.value.message
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing was opened


def registry_with(catalog: dict[str, Any]) -> ProviderRegistry:
    """The built-in providers plus `acme`, whose plugin brings `catalog`."""
    registry = ProviderRegistry()
    for name in DEFAULT_PLUGINS:
        registry.load(name, importlib.import_module(name))
    registry.register(ProviderSpec(id="acme", factory=lambda context: None, catalog=lambda: catalog))  # type: ignore[arg-type,return-value]
    return registry


def test_plugin_catalog_data_takes_binding_defaults_and_is_checked_like_the_rest() -> None:
    data = {
        "binding_defaults": {"acme": {"max_images_per_call": 3, "parameters": {"seed": {"handling": "not_available"}}}},
        "models": [raw_model(id="acme-model", providers={"acme": {"upstream_model": "a"}})],
        "bindings": {PRO.id: {"upstream_model": "acme-pro"}},
    }
    registry = registry_with(data)
    catalog = build_catalog(FileConfig(), registry=registry)
    for model_id, upstream in (("acme-model", "a"), (PRO.id, "acme-pro")):
        acme = catalog.get(model_id).providers["acme"]  # type: ignore[union-attr]
        assert (acme.upstream_model, acme.max_images_per_call, acme.unavailable(["seed"])) == (upstream, 3, {"seed"})
    check(catalog, [spec.id for spec in registry])

    broken = {
        **data,
        "models": [raw_model(id="acme-model", fallback_model="gone", providers={"acme": {"upstream_model": "a"}})],
    }
    registry = registry_with(broken)
    with pytest.raises(ConfigurationError, match="model acme-model: fallback_model 'gone' is not in the catalog"):
        check(build_catalog(FileConfig(), registry=registry), [spec.id for spec in registry])


def test_a_config_file_model_with_prose_in_to_stops_the_start_with_one_clear_line(tmp_path: Path) -> None:
    body = f'sizes = [{ROW}]\n[models.providers.openai]\nupstream_model = "u"\n'
    body += '[models.providers.openai.parameters.size]\nhandling = "converted"\nto = "the width and height"\n'
    with pytest.raises(ConfigurationError, match="A model of the config file is invalid") as info:
        Gateway(make_settings(tmp_path, config=write_model(tmp_path, body)))
    assert "providers.openai.parameters.size.to" in info.value.message
    assert "'the width and height' is not a dotted path" in info.value.message


def flexible(ratios: list[str], **limits: int) -> ModelEntry:
    limits = {"min_side": 512, "max_side": 1024, "max_pixels": 1024 * 1024, "multiple_of": 16, **limits}
    return entry(id="flex", sizes=None, pixel_limits=limits, aspect_ratios=ratios, resolution_tiers=["1K", "2K"])


def test_a_flexible_model_must_resolve_every_ratio_and_tier_within_its_limits() -> None:
    check(Catalog([flexible(["1:1", "16:9", "21:9"])]), KNOWN)
    with pytest.raises(ConfigurationError) as info:
        check(Catalog([flexible(["1:1", "16:9"], min_side=2048)]), KNOWN)
    assert "model flex: ratio 16:9 at tier 2K resolves to" in info.value.message
    assert "outside pixel_limits" in info.value.message
    with pytest.raises(ConfigurationError, match="model flex: aspect ratio 'wide' is not W:H"):
        check(Catalog([flexible(["1:1", "wide"])]), KNOWN)
