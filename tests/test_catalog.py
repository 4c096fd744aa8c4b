"""The built-in catalog (data/models.json) is consistent: every entry validates, size tables are
well formed, bindings only talk about parameters the model has, providers and fallbacks exist.

Pure data checks, no servers: they run in well under a second.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from imagegate.catalog import (
    BindingPrice,
    Catalog,
    ModelEntry,
    builtin_data,
    load_builtin_catalog,
    override_binding,
    parse_entries,
)
from imagegate.errors import ConfigurationError
from imagegate.normalize import nearest_ratio, ratio_value, resolve_layout
from imagegate.plugins import load_registry
from imagegate.pricing import Charge, Cost, call_cost, total_cost

DATA = builtin_data()
CORE = set(DATA["default_parameters"])
CATALOG = load_builtin_catalog()
MODELS = list(CATALOG)
IDS = [m.id for m in MODELS]
TABLE_MODELS = [m for m in MODELS if m.sizes is not None]
FLEXIBLE_MODELS = [m for m in MODELS if m.pixel_limits is not None]
# A table row's shape may be off its ratio by rounding: Gemini 2.5 Flash's published sizes are up to
# 2.8% off (896x1152 for 4:5), so 3% in log terms; each row must still be nearest to its own ratio.
RATIO_TOLERANCE = 0.03
NEW_MODELS = ("gemini-2.5-flash-image", "gpt-image-1", "bytedance/seedream-4", "bytedance/seedream-5-lite")


def by_id(model_id: str) -> ModelEntry:
    model = CATALOG.get(model_id)
    assert model is not None, f"{model_id} is not in the catalog"
    return model


def table(model: ModelEntry) -> set[tuple[str, str, int, int]]:
    return {(s.aspect_ratio, s.resolution, s.width, s.height) for s in model.sizes or []}


# --- the catalog as a whole ------------------------------------------------------------------


def test_every_raw_entry_validates_on_its_own() -> None:
    raw_models: list[dict[str, Any]] = DATA["models"]
    assert len(raw_models) >= 4
    for raw in raw_models:
        (entry,) = parse_entries({"models": [raw]}, DATA["default_parameters"])
        assert entry.id == raw["id"]


def test_model_ids_are_unique() -> None:
    raw_ids = [m["id"] for m in DATA["models"]]
    assert len(raw_ids) == len(set(raw_ids)), raw_ids
    assert len(CATALOG) == len(raw_ids)


def test_the_issue_models_are_all_there() -> None:
    assert IDS[0] == "gemini-3-pro-image-preview"  # the default model stays first
    for model_id in NEW_MODELS:
        assert model_id in IDS


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_providers_are_known_provider_ids(model: ModelEntry) -> None:
    assert model.providers, f"{model.id} has no provider"
    assert set(model.providers) <= {spec.id for spec in load_registry()}


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_fallback_model_exists_and_can_do_the_same_work(model: ModelEntry) -> None:
    if model.fallback_model is None:
        return
    fallback = by_id(model.fallback_model)
    assert fallback.id != model.id
    assert set(model.modes) <= set(fallback.modes)
    assert fallback.fallback_model != model.id  # no ping-pong


def test_nano_banana_pro_falls_back_to_seedream_5_lite() -> None:
    # The spec's fallback is the current Seedream on Replicate; seedream-4 stays in the catalog.
    assert by_id("gemini-3-pro-image-preview").fallback_model == "bytedance/seedream-5-lite"
    assert by_id("bytedance/seedream-4").id == "bytedance/seedream-4"


# --- parameters and bindings -----------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_core_parameters_are_always_declared(model: ModelEntry) -> None:
    assert CORE <= set(model.parameters)


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_binding_parameters_name_declared_parameters(model: ModelEntry) -> None:
    for provider_id, binding in model.providers.items():
        unknown = set(binding.parameters) - set(model.parameters) - CORE
        assert not unknown, f"{model.id}/{provider_id} handles undeclared parameters {sorted(unknown)}"


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_every_binding_says_how_it_handles_each_available_parameter(model: ModelEntry) -> None:
    """GET /models must answer "what happens to X on provider P" for every parameter a user may send."""
    available = {name for name, spec in model.parameters.items() if (spec.t2i, spec.edit) != ("not_available",) * 2}
    for provider_id, binding in model.providers.items():
        missing = available - set(binding.parameters)
        assert not missing, f"{model.id}/{provider_id} does not declare {sorted(missing)}"


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_renamed_and_converted_parameters_name_their_target(model: ModelEntry) -> None:
    for provider_id, binding in model.providers.items():
        for name, handling in binding.parameters.items():
            if handling.handling in ("renamed", "converted"):
                assert handling.to, f"{model.id}/{provider_id}: {name} is {handling.handling} but has no `to`"


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_parameter_defaults_are_among_their_values(model: ModelEntry) -> None:
    for name, spec in model.parameters.items():
        if spec.values is not None and spec.default is not None:
            assert str(spec.default) in spec.values, f"{model.id}: {name} default {spec.default!r}"


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_native_output_formats_are_gateway_formats(model: ModelEntry) -> None:
    formats = set(DATA["default_parameters"]["output_format"]["values"])
    for binding in model.providers.values():
        assert set(binding.native_output_formats) <= formats


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_price_is_sane(model: ModelEntry) -> None:
    assert model.price.per_image > 0
    assert set(model.price.by_resolution) <= set(model.resolution_tiers)


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", TABLE_MODELS, ids=[m.id for m in TABLE_MODELS])
def test_size_table_rows_are_unique_and_match_their_ratio(model: ModelEntry) -> None:
    assert model.sizes is not None
    keys = [(s.aspect_ratio, s.resolution) for s in model.sizes]
    assert len(keys) == len(set(keys)), "a (ratio, tier) appears twice"
    ratios = model.supported_ratios()
    for row in model.sizes:
        assert row.resolution in model.resolution_tiers, row
        wanted = ratio_value(row.aspect_ratio)
        off = abs(math.log(row.width / row.height / wanted))
        assert off <= RATIO_TOLERANCE, f"{model.id}: {row} is {off:.1%} off its ratio"
        assert nearest_ratio(row.width / row.height, ratios) == row.aspect_ratio, row
    for tier in model.resolution_tiers:
        assert any(s.resolution == tier for s in model.sizes), f"{model.id}: no row for tier {tier}"
    assert model.default_aspect_ratio in ratios


@pytest.mark.parametrize("model", TABLE_MODELS, ids=[m.id for m in TABLE_MODELS])
def test_larger_tiers_have_more_pixels(model: ModelEntry) -> None:
    assert model.sizes is not None
    for ratio in model.supported_ratios():
        areas = [
            s.width * s.height
            for tier in model.resolution_tiers
            for s in model.sizes
            if s.aspect_ratio == ratio and s.resolution == tier
        ]
        assert areas == sorted(areas), f"{model.id} {ratio}: {areas}"


@pytest.mark.parametrize("model", FLEXIBLE_MODELS, ids=[m.id for m in FLEXIBLE_MODELS])
def test_flexible_models_resolve_every_ratio_and_tier_within_limits(model: ModelEntry) -> None:
    limits = model.pixel_limits
    assert limits is not None and model.aspect_ratios
    assert limits.min_side <= limits.max_side and limits.max_pixels >= limits.min_side**2
    assert model.default_aspect_ratio in model.aspect_ratios
    for ratio in model.aspect_ratios:
        for tier in model.resolution_tiers:
            layout = resolve_layout(model, aspect_ratio=ratio, resolution=tier)
            w, h = layout.width, layout.height
            assert w % limits.multiple_of == 0 and h % limits.multiple_of == 0, (ratio, tier, w, h)
            assert limits.min_side <= min(w, h) and max(w, h) <= limits.max_side, (ratio, tier, w, h)
            assert w * h <= limits.max_pixels
            assert abs(math.log(w / h / ratio_value(ratio))) <= 0.01, (ratio, tier, w, h)
            assert layout.aspect_ratio == ratio


# --- the new models, hard-coded ------------------------------------------------------------


def test_nano_banana_is_1k_only_with_the_flash_size_table() -> None:
    model = by_id("gemini-2.5-flash-image")
    assert model.name == "Nano Banana"
    assert model.resolution_tiers == ["1K"] and model.default_resolution == "1K"
    assert table(model) == {
        ("1:1", "1K", 1024, 1024),
        ("2:3", "1K", 832, 1248),
        ("3:2", "1K", 1248, 832),
        ("3:4", "1K", 864, 1184),
        ("4:3", "1K", 1184, 864),
        ("4:5", "1K", 896, 1152),
        ("5:4", "1K", 1152, 896),
        ("9:16", "1K", 768, 1344),
        ("16:9", "1K", 1344, 768),
        ("21:9", "1K", 1536, 672),
    }
    assert len(model.sizes or []) == 10
    assert model.price.per_image == pytest.approx(0.039)
    assert model.max_input_images == 3
    assert model.modes == ["t2i", "edit"]
    assert list(model.providers) == ["gemini", "replicate", "fal"]
    assert model.providers["gemini"].upstream_model == "gemini-2.5-flash-image"
    assert model.providers["replicate"].upstream_model == "google/nano-banana"
    fal = model.providers["fal"]
    assert (fal.upstream_model, fal.upstream_model_edit) == ("fal-ai/nano-banana", "fal-ai/nano-banana/edit")
    # One tier: no provider is sent a resolution of its own.
    for binding in model.providers.values():
        resolution = binding.handling("resolution")
        assert resolution is not None and resolution.handling == "emulated"


def test_gpt_image_1_has_three_sizes_and_openai_only() -> None:
    model = by_id("gpt-image-1")
    assert table(model) == {("1:1", "1K", 1024, 1024), ("3:2", "1K", 1536, 1024), ("2:3", "1K", 1024, 1536)}
    assert model.resolution_tiers == ["1K"]
    assert model.price.per_image == pytest.approx(0.042) and model.price.by_resolution == {}
    assert list(model.providers) == ["openai"]
    binding = model.providers["openai"]
    assert binding.upstream_model == "gpt-image-1" and binding.max_images_per_call == 10
    params = model.parameters
    assert params["quality"].values == ["low", "medium", "high", "auto"] and params["quality"].default == "auto"
    assert params["background"].values == ["transparent", "opaque", "auto"]
    assert (params["moderation"].t2i, params["moderation"].edit) == ("supported", "not_available")
    assert (params["input_fidelity"].t2i, params["input_fidelity"].edit) == ("not_available", "supported")
    assert (params["seed"].t2i, params["seed"].edit) == ("not_available", "not_available")
    handling = {name: h.handling for name, h in binding.parameters.items()}
    assert handling["seed"] == "not_available"
    assert handling["size"] == "converted" and binding.parameters["size"].to == "size"
    assert handling["response_format"] == "emulated"
    assert binding.parameters["response_format"].to is None  # never sent: GPT image models reject it
    for name in ("quality", "background", "moderation", "input_fidelity"):
        assert handling[name] == "passthrough"


def test_seedream_4_is_flexible_on_replicate() -> None:
    model = by_id("bytedance/seedream-4")
    assert model.sizes is None and model.pixel_limits is not None
    assert (model.pixel_limits.min_side, model.pixel_limits.max_side) == (1024, 4096)
    assert model.pixel_limits.max_pixels == 4096 * 4096
    assert model.aspect_ratios == ["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"]
    assert model.resolution_tiers == ["1K", "2K", "4K"] and model.default_resolution == "2K"
    assert model.price.per_image == pytest.approx(0.03)
    assert model.modes == ["t2i", "edit"]
    assert list(model.providers) == ["replicate"]
    binding = model.providers["replicate"]
    assert binding.upstream_model == "bytedance/seedream-4"
    image = binding.handling("image")
    assert image is not None and image.to == "input.image_input"
    size = binding.handling("size")
    assert size is not None and size.handling == "converted"
    assert size.to is not None and "input.width" in size.to and "input.height" in size.to


# --- aliases, the flagship's upstream id, overrides ------------------------------------------


def test_nano_banana_pro_answers_to_its_aliases_and_calls_the_ga_id_on_gemini() -> None:
    pro = by_id("gemini-3-pro-image-preview")
    assert pro.aliases == ["gemini-3-pro-image", "nano-banana-pro"]
    for alias in pro.aliases:
        assert CATALOG.get(alias) is pro
        assert CATALOG.alias_of(alias) == pro.id
    assert CATALOG.alias_of(pro.id) is None
    assert pro.providers["gemini"].upstream_model == "gemini-3-pro-image"
    assert "2026-06-25" in pro.notes  # the source of the retirement fact travels with the data


def _tiny(model_id: str, aliases: list[str] | None = None) -> ModelEntry:
    raw = {**next(m for m in DATA["models"] if m["id"] == "gpt-image-1"), "id": model_id, "aliases": aliases or []}
    (entry,) = parse_entries({"models": [raw]}, DATA["default_parameters"])
    return entry


def test_an_alias_may_not_collide_with_an_id_or_another_alias() -> None:
    catalog = Catalog([_tiny("a", ["a-alias"])])
    with pytest.raises(ConfigurationError, match="'a' is already taken"):
        catalog.add(_tiny("b", ["a"]))  # an alias that is another model's id
    with pytest.raises(ConfigurationError, match="'a-alias' is already taken"):
        catalog.add(_tiny("c", ["a-alias"]))  # an alias that is another model's alias
    with pytest.raises(ConfigurationError, match="already an alias"):
        catalog.add(_tiny("a-alias"))  # an id that is another model's alias
    with pytest.raises(ValueError, match="alias repeats"):
        _tiny("d", ["d"])
    assert catalog.get("a-alias") is catalog.get("a") and catalog.get("b") is None  # refusals change nothing
    catalog.add(_tiny("a", ["renamed"]))  # replacing an entry drops its old aliases
    assert catalog.get("a-alias") is None and catalog.get("renamed") is catalog.get("a")


def test_a_config_override_changes_one_binding_and_nothing_else() -> None:
    catalog = load_builtin_catalog()
    override_binding(
        catalog,
        "nano-banana-pro",
        "gemini",
        {"upstream_model": "gemini-3-pro-image-preview", "price": {"per_image": 0.1, "by_resolution": {"4K": 0.2}}},
    )
    pro = catalog.get("gemini-3-pro-image-preview")
    assert pro is not None
    assert pro.providers["gemini"].upstream_model == "gemini-3-pro-image-preview"
    assert pro.binding_price("gemini") == BindingPrice(per_image=0.1, by_resolution={"4K": 0.2})
    assert not pro.binding_price("gemini").estimated  # an operator's negotiated price is known
    assert pro.providers["gemini"].parameters == by_id(pro.id).providers["gemini"].parameters
    assert list(pro.providers) == list(by_id(pro.id).providers)  # priority order kept
    assert pro.providers["fal"] == by_id(pro.id).providers["fal"]
    assert catalog.get("nano-banana-pro") is pro  # aliases survive the replacement


@pytest.mark.parametrize(
    ("model_id", "provider_id", "changes", "message"),
    [
        ("no-such-model", "gemini", {"upstream_model": "x"}, "there is no model 'no-such-model'"),
        ("gemini-3-pro-image-preview", "nope", {"upstream_model": "x"}, "has no provider 'nope'"),
        ("gemini-3-pro-image-preview", "gemini", {"price": {"per_image": -1}}, "price.per_image"),
        ("gemini-3-pro-image-preview", "gemini", {"price": {"per_image": 1, "bogus": 2}}, "price.bogus"),
    ],
)
def test_a_bad_override_is_a_clear_configuration_error(
    model_id: str, provider_id: str, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        override_binding(load_builtin_catalog(), model_id, provider_id, changes)
    assert "[model_overrides." in info.value.message


# --- prices ------------------------------------------------------------------------------------


def test_the_listed_price_stays_the_specs_while_providers_charge_their_own() -> None:
    pro = by_id("gemini-3-pro-image-preview")
    assert pro.price.per_image == pytest.approx(0.067)
    gemini, fal = pro.binding_price("gemini"), pro.binding_price("fal")
    assert [gemini.for_resolution(t) for t in ("1K", "2K", "4K")] == [0.134, 0.134, 0.24]
    assert gemini.per_input_image == pytest.approx(0.0011) and not gemini.estimated
    assert [fal.for_resolution(t) for t in ("1K", "2K", "4K")] == [0.15, 0.15, 0.30]
    assert fal.extras == {"enable_web_search": 0.015} and not fal.estimated
    for unknown in ("replicate", "openai"):
        assert pro.binding_price(unknown).estimated and pro.binding_price(unknown).source


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_every_binding_price_is_known_or_marked_estimated_with_a_source(model: ModelEntry) -> None:
    for provider_id in model.providers:
        price = model.binding_price(provider_id)
        assert price.source, f"{model.id}/{provider_id}: say where the price comes from"
        assert price.currency == model.price.currency
        if model.providers[provider_id].price is None:
            assert price.estimated and price.per_image == model.price.per_image


def test_call_cost_counts_tier_input_images_and_extras() -> None:
    price = BindingPrice(
        per_image=0.134, by_resolution={"4K": 0.24}, per_input_image=0.0011, extras={"enable_web_search": 0.015}
    )
    assert call_cost(Charge(price, "1K", images=1)) == pytest.approx(0.134)
    assert call_cost(Charge(price, "4K", images=2)) == pytest.approx(0.48)
    assert call_cost(Charge(price, "2K", images=1, input_images=3)) == pytest.approx(0.134 + 0.0033)
    web = {"enable_web_search": True}
    assert call_cost(Charge(price, "1K", images=1, options=web)) == pytest.approx(0.149)
    assert call_cost(Charge(price, "1K", images=1, options={"enable_web_search": False})) == pytest.approx(0.134)


def test_total_cost_sums_calls_of_different_providers_and_any_estimate_marks_it() -> None:
    known = BindingPrice(per_image=0.134)
    guessed = BindingPrice(per_image=0.067, estimated=True)
    both = total_cost([Charge(known, "1K", 1), Charge(guessed, "1K", 2)])
    assert both == Cost(amount=0.268, currency="USD", estimated=True)
    assert total_cost([Charge(known, "1K", 3)]) == Cost(amount=0.402, currency="USD", estimated=False)
    assert total_cost([]) == Cost(0.0, "USD", False)


# --- bytedance/seedream-5-lite -----------------------------------------------------------------


def test_seedream_5_lite_has_its_own_sizes_parameters_and_price() -> None:
    model = by_id("bytedance/seedream-5-lite")
    assert model.resolution_tiers == ["2K", "3K"] and model.default_resolution == "2K"
    assert model.supported_ratios() == ["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"]
    assert "4:5" not in model.supported_ratios() and "5:4" not in model.supported_ratios()
    assert model.max_input_images == 14 and model.modes == ["t2i", "edit"]
    assert "enhance_prompt" not in model.parameters  # seedream-4's, not in 5 lite's schema
    assert "UNCONFIRMED" in model.notes and "section 5" in model.notes
    binding = model.providers["replicate"]
    assert binding.upstream_model == "bytedance/seedream-5-lite"
    size = binding.handling("size")
    assert size is not None and size.to is not None and "input.width" not in size.to  # no custom size
    resolution = binding.handling("resolution")
    assert resolution is not None and resolution.to == "input.size"
    assert binding.unavailable(["seed"]) == {"seed"}
    assert model.binding_price("replicate").estimated
    layout = resolve_layout(model, aspect_ratio="4:5", resolution="4K")
    assert (layout.aspect_ratio, layout.resolution) == ("3:4", "3K")
