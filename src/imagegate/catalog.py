"""The model catalog: models, size tables, prices and per-provider parameter handling, as data.

The built-in entries live in `data/models.json`; a config file may add or replace entries, and
override a binding's upstream id or price without redefining the model (`[model_overrides]`).
Adding a model is adding an entry; nothing here or in the router names a model.

A model may have `aliases`: other ids it answers to (`nano-banana-pro`). They are resolved here,
in `Catalog.get`, and nowhere else; a request by alias is reported under the id it was sent with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import wire
from .errors import ConfigurationError, ImagegateError

Mode = Literal["t2i", "edit"]
Availability = Literal["required", "supported", "not_available"]
Handling = Literal["passthrough", "renamed", "converted", "emulated", "not_available"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeEntry(_Strict):
    aspect_ratio: str
    resolution: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class PixelLimits(_Strict):
    """For models that take any W and H within limits instead of a size table."""

    min_side: int = Field(default=64, gt=0)
    max_side: int = Field(gt=0)
    max_pixels: int = Field(gt=0)
    min_pixels: int = Field(default=0, ge=0)
    multiple_of: int = Field(default=8, gt=0)
    # Long side over short side at most this (gpt-image-2: 3); None: any ratio.
    max_aspect_ratio: float | None = Field(default=None, ge=1)


class Price(_Strict):
    per_image: float = Field(ge=0)
    currency: str = "USD"
    by_resolution: dict[str, float] = Field(default_factory=dict)

    def for_resolution(self, tier: str) -> float:
        return self.by_resolution.get(tier, self.per_image)


class BindingPrice(_Strict):
    """What one provider charges for one upstream call (see pricing.py for the arithmetic).

    `by_resolution` overrides `per_image` per tier; `per_input_image` is charged for every image
    sent with a call; `extras` maps an option (e.g. `enable_web_search`) to a charge per call when
    that option is true. `estimated` says the figure is not the provider's published price."""

    per_image: float = Field(ge=0)
    currency: str = "USD"
    by_resolution: dict[str, float] = Field(default_factory=dict)
    per_input_image: float = Field(default=0.0, ge=0)
    extras: dict[str, float] = Field(default_factory=dict)
    # Per image by the `quality` sent and the output "WxH" (OpenAI's GPT image price tables); when
    # given it replaces `per_image` / `by_resolution` for calls whose size is known.
    by_quality_size: dict[str, dict[str, float]] = Field(default_factory=dict)
    estimated: bool = False
    source: str = ""  # where the figures come from (JSON has no comments)

    @model_validator(mode="after")
    def _sizes_are_wxh(self) -> BindingPrice:
        for quality, table in self.by_quality_size.items():
            for size, amount in table.items():
                if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", size) or amount < 0:
                    raise ValueError(f"price by_quality_size[{quality!r}]: {size!r} must be WxH with a price >= 0")
        return self

    def for_resolution(self, tier: str) -> float:
        return self.by_resolution.get(tier, self.per_image)


class ParamSpec(_Strict):
    type: Literal["string", "integer", "boolean", "number", "file"]
    description: str
    t2i: Availability
    edit: Availability
    values: list[str] | None = None
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    provider: str | None = None  # the spec's label for provider-specific parameters
    # What a value the model or its provider lacks does: None rejects it (400 unsupported_parameter);
    # "not_applied" (OpenAI's standard fields, which real clients send whatever the model) serves
    # the request without it and says so in `adjustments`, unless IMAGEGATE_STRICT_PARAMETERS is set.
    if_unavailable: Literal["not_applied"] | None = None

    def availability(self, mode: Mode) -> Availability:
        return self.t2i if mode == "t2i" else self.edit


class ParamHandlingSpec(_Strict):
    handling: Handling
    # Where it goes upstream: dotted paths in the request body, ` + `-joined where one value becomes
    # several fields (a JSON list is accepted too). Checked here; see wire.py for the grammar.
    to: str | None = None
    how: str | None = None  # a sentence for people reading GET /models

    @field_validator("to", mode="before")
    @classmethod
    def _paths_are_well_formed(cls, to: Any) -> Any:
        if isinstance(to, (str, list)) and to:
            return wire.JOIN.join(wire.parse_to(to))
        return to

    @property
    def paths(self) -> tuple[str, ...]:
        """The upstream paths of `to`; () when it has none."""
        return wire.parse_to(self.to) if self.to else ()


class ProviderBinding(_Strict):
    upstream_model: str
    # Some upstreams serve edits from another endpoint (fal's ".../edit").
    upstream_model_edit: str | None = None
    max_images_per_call: int = Field(default=1, ge=1)
    native_output_formats: list[str] = Field(default_factory=list)
    parameters: dict[str, ParamHandlingSpec] = Field(default_factory=dict)
    # Per mode, values the provider uses for parameters a request leaves out (the local engine's
    # steps and guidance, which depend on the checkpoint).
    defaults: dict[Mode, dict[str, Any]] = Field(default_factory=dict)
    # What this provider charges; None: the model's listed price, as an estimate.
    price: BindingPrice | None = None

    def handling(self, param: str) -> ParamHandlingSpec | None:
        return self.parameters.get(param)

    def unavailable(self, names: Iterable[str]) -> set[str]:
        """Those of `names` this provider declares not available."""
        return {n for n in names if (h := self.parameters.get(n)) is not None and h.handling == "not_available"}


class ModelEntry(_Strict):
    id: str
    # Other ids the model answers to; each is served and reported under the id the client sent.
    aliases: list[str] = Field(default_factory=list)
    name: str
    description: str = ""
    # Where the entry's facts come from, and which are unconfirmed (JSON has no comments).
    notes: str = ""
    owned_by: str = "imagegate"
    modes: list[Mode]
    resolution_kind: Literal["k", "megapixels"] = "k"
    resolution_tiers: list[str]
    default_resolution: str
    default_aspect_ratio: str = "1:1"
    max_input_images: int = Field(default=1, ge=1)
    input_formats: list[str] = Field(default_factory=lambda: ["png", "jpeg", "webp"])
    sizes: list[SizeEntry] | None = None
    pixel_limits: PixelLimits | None = None
    # Ratios a flexible model accepts; a table model takes its ratios from `sizes`.
    aspect_ratios: list[str] | None = None
    price: Price
    # Served instead when the caller allows it and every provider of this model is at capacity.
    fallback_model: str | None = None
    parameters: dict[str, ParamSpec]
    providers: dict[str, ProviderBinding]  # in priority order

    @model_validator(mode="after")
    def _has_one_size_model(self) -> ModelEntry:
        if (self.sizes is None) == (self.pixel_limits is None):
            raise ValueError(f"model {self.id}: give exactly one of `sizes` or `pixel_limits`")
        if self.pixel_limits is not None and not self.aspect_ratios:
            raise ValueError(f"model {self.id}: a flexible model needs `aspect_ratios`")
        if self.default_resolution not in self.resolution_tiers:
            raise ValueError(f"model {self.id}: default_resolution not in resolution_tiers")
        if self.id in self.aliases or len(set(self.aliases)) != len(self.aliases):
            raise ValueError(f"model {self.id}: an alias repeats the id or another alias")
        return self

    def binding_price(self, provider_id: str) -> BindingPrice:
        """What `provider_id` charges: its binding's price, else the model's listed one, estimated."""
        binding = self.providers[provider_id]
        if binding.price is not None:
            return binding.price
        listed = self.price
        return BindingPrice(
            per_image=listed.per_image,
            currency=listed.currency,
            by_resolution=dict(listed.by_resolution),
            estimated=True,
            source="the model's listed price (the provider's own is not known)",
        )

    def supported_ratios(self) -> list[str]:
        if self.sizes is not None:
            return list(dict.fromkeys(s.aspect_ratio for s in self.sizes))
        return list(self.aspect_ratios or [])


class Catalog:
    """Model id -> entry, in the order they were added; aliases -> the id they stand for."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._aliases: dict[str, str] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: ModelEntry) -> None:
        """Add or replace an entry. An id or alias may name only one model: an entry that replaces
        another (same id) drops the old one's aliases first."""
        others = {alias: owner for alias, owner in self._aliases.items() if owner != entry.id}
        if entry.id in others:
            raise ConfigurationError(f"model {entry.id}: the id is already an alias of {others[entry.id]}")
        for alias in entry.aliases:
            owner = others.get(alias) or (alias if alias in self._models else None)
            if owner is not None:
                raise ConfigurationError(f"model {entry.id}: alias {alias!r} is already taken by model {owner}")
        self._models[entry.id] = entry
        self._aliases = {**others, **dict.fromkeys(entry.aliases, entry.id)}

    def get(self, model_id: str) -> ModelEntry | None:
        """The entry for an id or an alias (the one place aliases are resolved)."""
        return self._models.get(self._aliases.get(model_id, model_id))

    def alias_of(self, name: str) -> str | None:
        """The id `name` is an alias of, or None when it is not an alias."""
        return self._aliases.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)


def override_binding(catalog: Catalog, model_id: str, provider_id: str, changes: dict[str, Any]) -> None:
    """Change fields of one binding (its upstream ids, its price) without redefining the model:
    the config file's `[model_overrides."<model>".providers.<provider>]`. A model or provider the
    catalog does not have is a ConfigurationError, as is a value the binding cannot take."""
    where = f'[model_overrides."{model_id}".providers.{provider_id}]'
    model = catalog.get(model_id)
    if model is None:
        known = ", ".join(m.id for m in catalog)
        raise ConfigurationError(f"{where}: there is no model '{model_id}' (the catalog has: {known}).")
    if provider_id not in model.providers:
        known = ", ".join(model.providers)
        raise ConfigurationError(f"{where}: model '{model.id}' has no provider '{provider_id}' (it has: {known}).")
    try:
        binding = ProviderBinding.model_validate({**model.providers[provider_id].model_dump(), **changes})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"{where}: {problems}") from exc
    catalog.add(model.model_copy(update={"providers": {**model.providers, provider_id: binding}}))


def add_binding(catalog: Catalog, model_id: str, provider_id: str, raw_binding: dict[str, Any]) -> None:
    """One more provider for a model already in the catalog (a plugin's `bindings`), after the
    model's own providers. The model must exist, and must not have that provider yet."""
    model = catalog.get(model_id)
    if model is None:
        raise ConfigurationError(f"a binding for model '{model_id}', which the catalog does not have")
    if provider_id in model.providers:
        raise ConfigurationError(f"model '{model.id}' already has provider '{provider_id}'")
    binding = ProviderBinding.model_validate(raw_binding)
    catalog.add(model.model_copy(update={"providers": {**model.providers, provider_id: binding}}))


def parse_entries(raw: dict[str, Any], default_parameters: dict[str, Any] | None = None) -> list[ModelEntry]:
    """Validate catalog entries; each gets the gateway's core parameters unless it redefines them.
    A redefined standard field keeps the default's `if_unavailable`: it is still OpenAI's field.
    `raw["binding_defaults"]` (per provider id) fills in what a binding of that provider in the
    same data leaves out, parameter by parameter: a binding lists only what differs."""
    defaults = default_parameters or {}
    binding_defaults: dict[str, Any] = raw.get("binding_defaults", {})
    entries = []
    for model in raw.get("models", []):
        merged = dict(model)
        own = {name: _inherit_leniency(name, spec, defaults) for name, spec in model.get("parameters", {}).items()}
        merged["parameters"] = {**defaults, **own}
        if isinstance(model.get("providers"), dict):
            merged["providers"] = {
                pid: with_binding_defaults(binding, binding_defaults.get(pid))
                for pid, binding in model["providers"].items()
            }
        entries.append(ModelEntry.model_validate(merged))
    return entries


def with_binding_defaults(binding: Any, defaults: dict[str, Any] | None) -> Any:
    """A raw binding over its provider's defaults: its own fields win, and its own `parameters`
    win one by one (a parameter's handling is replaced whole, never merged field by field)."""
    if not defaults or not isinstance(binding, dict):
        return binding
    parameters = {**defaults.get("parameters", {}), **binding.get("parameters", {})}
    return {**defaults, **binding, "parameters": parameters}


def _inherit_leniency(name: str, spec: Any, defaults: dict[str, Any]) -> Any:
    default = defaults.get(name)
    if not isinstance(spec, dict) or not isinstance(default, dict) or "if_unavailable" not in default:
        return spec
    return {"if_unavailable": default["if_unavailable"], **spec}


def builtin_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("imagegate").joinpath("data/models.json").read_text("utf-8"))
    return data


def load_builtin_catalog() -> Catalog:
    data = builtin_data()
    return Catalog(parse_entries(data, data.get("default_parameters")))


# --- cross-model checks ------------------------------------------------------------------------

# A size-table row's shape may be off its ratio by rounding: Gemini 2.5 Flash's published sizes are
# up to 2.8% off (896x1152 for 4:5), so 3% in log terms; each row must still be nearest its own ratio.
RATIO_TOLERANCE = 0.03


def check(catalog: Catalog, known_providers: Iterable[str]) -> None:
    """What no single entry can check on its own, for built-in, config-file and plugin models
    alike: ConfigurationError listing every problem found (not only the first)."""
    known = set(known_providers)
    problems = [problem for model in catalog for problem in model_problems(model, catalog, known)]
    if problems:
        raise ConfigurationError("The model catalog is inconsistent:\n- " + "\n- ".join(problems))


def model_problems(model: ModelEntry, catalog: Catalog, known_providers: set[str]) -> list[str]:
    where = f"model {model.id}"
    problems: list[str] = []
    if model.fallback_model is not None:
        fallback = catalog.get(model.fallback_model)
        if fallback is None:
            problems.append(f"{where}: fallback_model {model.fallback_model!r} is not in the catalog")
        elif fallback.id == model.id:
            problems.append(f"{where}: fallback_model {model.fallback_model!r} is the model itself")
        elif not set(model.modes) <= set(fallback.modes):
            problems.append(f"{where}: fallback_model {fallback.id} does not serve every mode of the model")
    if not model.providers:
        problems.append(f"{where}: no provider serves it")
    for provider_id in model.providers:
        if provider_id not in known_providers:
            problems.append(f"{where}: unknown provider {provider_id!r} (known: {', '.join(sorted(known_providers))})")
    ratios = model.supported_ratios()
    if model.default_aspect_ratio not in ratios:
        problems.append(
            f"{where}: default_aspect_ratio {model.default_aspect_ratio} is not among its ratios ({', '.join(ratios)})"
        )
    problems += [f"{where}: {p}" for p in _size_table_problems(model)]
    problems += [f"{where}: {p}" for p in _flexible_size_problems(model)]
    return problems


def _flexible_size_problems(model: ModelEntry) -> list[str]:
    """A flexible model: every ratio at every tier resolves to a size within its pixel limits."""
    limits = model.pixel_limits
    if limits is None:
        return []
    from .normalize import ratio_value, resolve_layout  # normalize imports this module

    problems = [f"aspect ratio {r!r} is not W:H" for r in model.aspect_ratios or [] if not _is_ratio(r, ratio_value)]
    if problems:
        return problems
    for ratio in model.aspect_ratios or []:
        for tier in model.resolution_tiers:
            try:
                layout = resolve_layout(model, aspect_ratio=ratio, resolution=tier)
            except (ImagegateError, ValueError, ZeroDivisionError):
                problems.append(f"ratio {ratio} at tier {tier} does not resolve to a size")
                continue
            w, h = layout.width, layout.height
            if (
                w % limits.multiple_of
                or h % limits.multiple_of
                or min(w, h) < limits.min_side
                or max(w, h) > limits.max_side
                or w * h > limits.max_pixels
            ):
                problems.append(f"ratio {ratio} at tier {tier} resolves to {w}x{h}, outside pixel_limits")
    return problems


def _is_ratio(text: str, ratio_value: Callable[[str], float]) -> bool:
    try:
        return ratio_value(text) > 0
    except (ValueError, ZeroDivisionError):
        return False


def _size_table_problems(model: ModelEntry) -> list[str]:
    """A size table's rows: one per (ratio, tier), each tier a declared one and each shape nearest
    its own ratio; every tier has a row."""
    if model.sizes is None:
        return []
    from .normalize import nearest_ratio, ratio_value  # normalize imports this module

    problems: list[str] = []
    keys = [(s.aspect_ratio, s.resolution) for s in model.sizes]
    problems += [f"size {r} {t} appears twice" for r, t in dict.fromkeys(k for k in keys if keys.count(k) > 1)]
    ratios = model.supported_ratios()
    for row in model.sizes:
        shape = f"size {row.aspect_ratio} {row.resolution} ({row.width}x{row.height})"
        if row.resolution not in model.resolution_tiers:
            problems.append(f"{shape}: tier {row.resolution} is not in resolution_tiers")
        try:
            wanted = ratio_value(row.aspect_ratio)
            nearest = nearest_ratio(row.width / row.height, ratios)
        except (ValueError, ZeroDivisionError):
            problems.append(f"{shape}: a ratio of the table is not W:H")
            continue
        if wanted <= 0 or abs(math.log(row.width / row.height / wanted)) > RATIO_TOLERANCE:
            problems.append(f"{shape} is more than {RATIO_TOLERANCE:.0%} off its ratio")
        elif nearest != row.aspect_ratio:
            problems.append(f"{shape} is nearer another ratio of the table")
    problems += [
        f"tier {tier} has no row in sizes"
        for tier in model.resolution_tiers
        if not any(s.resolution == tier for s in model.sizes)
    ]
    return problems
