"""The parameter normalization engine: raw request fields -> typed values, checked against the
catalog's declarations for the model and for the provider that will serve it. Pure, no I/O.

For each field:
- the model's `parameters` say whether it is required / supported / not available per mode, and
  its type, allowed values and range;
- the provider binding says how it reaches the upstream: passthrough, renamed, converted,
  emulated (done by the gateway) or not available (a 400 naming the parameter and model);
- `stream` and `partial_images` are the gateway's own (it streams for every model); partial
  images come only from a provider whose binding declares `partial_images` (emulated), elsewhere
  the request streams without them and `adjustments` says so;
- OpenAI's standard fields (`quality`, `style`, `background`, `moderation`, `input_fidelity`)
  are declared for every model by the catalog's defaults, with
  `if_unavailable: not_applied`: clients send them whatever the model, so where the model or
  provider lacks one the request is served without it and `adjustments` says `not applied`
  (strict mode, IMAGEGATE_STRICT_PARAMETERS, makes that a 400 again). Their types and enums are
  always checked;
- a field neither declares is passed straight through to the upstream.

`provider_views` is the one decision per provider: it refuses what no provider of the request
honours (`refused_everywhere`), then gives each provider its `ProviderView`: the parameters it
gets, what happened to each given one (`fates`), and its `WirePlan` (where each value goes on the
wire, the upstream model id per mode, max images per call, native output formats), so that
adapters never consult the catalog. `coerce_scalar` is the same typing for values checked against
a Python type instead of a catalog spec (the local engine's pipeline arguments).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import wire
from .catalog import Handling, Mode, ModelEntry, ParamHandlingSpec, ParamSpec, ProviderBinding
from .errors import InvalidRequest, UnsupportedParameter
from .normalize import Adjustment

# Handled by the gateway itself for every provider; never forwarded as options.
GATEWAY_PARAMS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "aspect_ratio",
        "resolution",
        "seed",
        "response_format",
        "output_format",
        "output_compression",
        "image",
        "images",
        "mask",
        "user",
        "safety_identifier",
        "stream",
        "partial_images",
        "webhook_url",  # async jobs: where the job's end is POSTed (webhooks); never upstream
    }
)
# Fields only an async job (Prefer: respond-async) acts on; a synchronous request is served without
# them and says so.
ASYNC_ONLY = frozenset({"webhook_url"})
# Free text: a number or a list here is a client bug, never turned into text.
TEXT_PARAMS = frozenset({"prompt"})
# Aliases users send for the same value; the canonical spelling is no adjustment.
VALUE_ALIASES = {"output_format": {"jpg": "jpeg"}}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass
class NormalizedParams:
    values: dict[str, Any]  # typed, known parameters that were given (or defaulted)
    options: dict[str, Any] = field(default_factory=dict)  # provider-handled known params
    extra: dict[str, Any] = field(default_factory=dict)  # unknown: passed through
    ignored: list[Adjustment] = field(default_factory=list)  # given, but not applied

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value


def is_true(raw: Any) -> bool:
    """A boolean field's value reads true: JSON true, or a form field spelling it ("true", "1"...)."""
    return raw is True or (isinstance(raw, str) and raw.strip().lower() in _TRUE)


def _coerce(name: str, spec: ParamSpec, raw: Any) -> Any:
    """Type-check one value against its spec; form fields arrive as strings."""
    if spec.type == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return is_true(raw)
        raise InvalidRequest(f"'{name}' must be a boolean, got {raw!r}.", param=name)
    if spec.type in ("integer", "number"):
        number = _number(name, spec, raw)
        lo, hi = spec.minimum, spec.maximum
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = (
                f"between {_text(lo)} and {_text(hi)}"
                if lo is not None and hi is not None
                else (f"at least {_text(lo)}" if lo is not None else f"at most {_text(hi)}")
            )
            raise InvalidRequest(f"'{name}' must be {bounds}, got {raw!r}.", param=name)
        return number
    if spec.type == "string":
        return _string(name, spec, raw)
    return raw


# A Python type a value may have to be, as the catalog spells the type of a parameter.
_SPEC_TYPES: dict[type, Literal["boolean", "integer", "number", "string"]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
}


def coerce_scalar(name: str, raw: Any, wanted: type) -> Any:
    """`raw` as the Python type `wanted` (bool, int, float or str), by the rules catalog parameters
    follow (form fields arrive as text): the local engine's pipeline arguments are typed here too."""
    kind = _SPEC_TYPES.get(wanted)
    if kind is None:
        raise InvalidRequest(f"'{name}' cannot be set by a request.", param=name)
    return _coerce(name, ParamSpec(type=kind, description=name, t2i="supported", edit="supported"), raw)


def _string(name: str, spec: ParamSpec, raw: Any) -> str:
    if (
        isinstance(raw, bool)
        or not isinstance(raw, (str, int, float))
        or (name in TEXT_PARAMS and not isinstance(raw, str))
    ):
        raise InvalidRequest(f"'{name}' must be a string, got {_shown(raw)}.", param=name)
    text = str(raw).strip()
    if name in TEXT_PARAMS and not text:
        raise InvalidRequest(f"'{name}' must not be empty.", param=name)
    text = VALUE_ALIASES.get(name, {}).get(text.lower(), text)
    if spec.values is None or name == "resolution":  # tiers are matched, not enumerated
        return text
    match = next((v for v in spec.values if v.lower() == text.lower()), None)
    if match is None:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(spec.values)}; got {raw!r}.", param=name)
    return match


def _shown(raw: Any) -> str:
    """A wrong value as the message shows it: its type, and the value when it is short."""
    text = repr(raw)
    return f"{type(raw).__name__} {text}" if len(text) <= 40 else f"a {type(raw).__name__}"


def _number(name: str, spec: ParamSpec, raw: Any) -> int | float:
    if isinstance(raw, bool):
        raise InvalidRequest(f"'{name}' must be a number, got {raw!r}.", param=name)
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"'{name}' must be a number, got {raw!r}.", param=name) from exc
    if not math.isfinite(value):
        raise InvalidRequest(f"'{name}' must be a finite number, got {raw!r}.", param=name)
    if spec.type == "integer":
        if value != int(value):
            raise InvalidRequest(f"'{name}' must be a whole number, got {raw!r}.", param=name)
        return int(value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_default(spec: ParamSpec, value: Any) -> bool:
    return value is None or (spec.default is not None and value == spec.default)


def normalize_params(raw: dict[str, Any], *, model: ModelEntry, mode: Mode, strict: bool = False) -> NormalizedParams:
    """Check and type every field of a request against the model (providers come later).
    `strict` (IMAGEGATE_STRICT_PARAMETERS) refuses standard fields the model lacks."""
    result = NormalizedParams(values={})
    for name, value in raw.items():
        if name in ("model", "image", "images", "mask") or value is None:
            continue  # the model is resolved before; files are checked by the image pipeline
        spec = model.parameters.get(name)
        if spec is None:
            result.extra[name] = value
            continue
        typed = _coerce(name, spec, value)
        if spec.availability(mode) == "not_available":
            if _is_default(spec, typed):
                result.ignored.append(Adjustment(name, _text(typed), "ignored (not available on this model)"))
                continue
            if spec.if_unavailable == "not_applied" and not strict:
                result.ignored.append(Adjustment(name, _text(typed), f"not applied (model {model.id} lacks it)"))
                continue
            raise UnsupportedParameter(
                f"Parameter '{name}' is not available for model '{model.id}'"
                + (" in edit mode." if mode == "edit" else " in text-to-image mode."),
                param=name,
            )
        if name in ASYNC_ONLY:  # an async job takes it off its request before the pipeline runs
            result.ignored.append(Adjustment(name, _text(typed), "not applied (only with Prefer: respond-async)"))
            continue
        result.values[name] = typed
        if name not in GATEWAY_PARAMS:
            result.options[name] = typed
    _check_required(result, model, mode)
    return result


def refused_everywhere(
    params: NormalizedParams, model: ModelEntry, bindings: Iterable[ProviderBinding], *, strict: bool
) -> set[str]:
    """The given parameters no provider of the request honours: each is a 400 unless it is a
    standard field served without it (not in `strict` mode)."""
    lacking = [b.unavailable(params.values) for b in bindings]
    names = set.intersection(*lacking) if lacking else set()
    return {n for n in names if strict or model.parameters[n].if_unavailable != "not_applied"}


# --- one provider's view ------------------------------------------------------------------

NOT_SENT: tuple[Handling, ...] = ("emulated", "not_available")  # the gateway's, or refused before any call


@dataclass(frozen=True)
class WirePlan:
    """What one provider's adapter needs from the catalog, decided before any call: where each
    value goes on the wire, which upstream model serves each mode, how many images one call may
    make, which output formats the upstream makes itself, and its engine defaults."""

    upstream_model: str
    upstream_model_edit: str | None = None
    max_images_per_call: int = 1
    native_output_formats: tuple[str, ...] = ()
    handlings: Mapping[str, ParamHandlingSpec] = field(default_factory=dict)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per mode

    @classmethod
    def from_binding(cls, binding: ProviderBinding) -> WirePlan:
        return cls(
            upstream_model=binding.upstream_model,
            upstream_model_edit=binding.upstream_model_edit,
            max_images_per_call=binding.max_images_per_call,
            native_output_formats=tuple(binding.native_output_formats),
            handlings=dict(binding.parameters),
            defaults={mode: dict(values) for mode, values in binding.defaults.items()},
        )

    def upstream_for(self, mode: str) -> str:
        return self.upstream_model_edit if mode == "edit" and self.upstream_model_edit else self.upstream_model

    def handling(self, param: str) -> Handling | None:
        """How the binding declares `param` handled; None when it does not mention it."""
        spec = self.handlings.get(param)
        return spec.handling if spec is not None else None

    def emulates(self, param: str) -> bool:
        """The gateway does it (a mask composited back, n split into calls...), not the upstream."""
        return self.handling(param) == "emulated"

    def paths(self, param: str) -> tuple[str, ...]:
        """Every upstream path `param` is declared to reach, whatever its handling."""
        spec = self.handlings.get(param)
        return spec.paths if spec is not None else ()

    def target(self, param: str, undeclared: str | None = None) -> str | None:
        """The one path a value is written to: its `to` (or its own name), `undeclared` when the
        binding does not mention it, None when it is not sent or reaches several fields or a list
        (`size -> input.width + input.height`, `contents[0]...`: the adapter builds those)."""
        spec = self.handlings.get(param)
        if spec is None:
            return undeclared
        if spec.handling in NOT_SENT:
            return None
        paths = spec.paths or (param,)
        return paths[0] if len(paths) == 1 and wire.is_plain(paths[0]) else None

    def place(
        self, body: dict[str, Any], param: str, value: Any, *, undeclared: str | None = None, prefix: str = ""
    ) -> None:
        """Write `value` at `param`'s target (less `prefix`, the part the adapter wraps around the
        body itself: Replicate's `input.`); nothing when it is None or not sent there."""
        path = self.target(param, undeclared)
        if path is not None and value is not None:
            wire.place(body, path.removeprefix(prefix), value)

    def native_format(self, output_format: str | None) -> str | None:
        """The output format to ask the upstream for: the request's, when the upstream makes it."""
        return output_format if output_format in self.native_output_formats else None

    def reserved(self, prefix: str = "") -> list[tuple[str, ...]]:
        """The upstream paths the gateway sends its own values to, less `prefix`: pass-through may
        not replace them (see providers/base.py's merge_passthrough)."""
        return [
            wire.reserved_prefix(path.removeprefix(prefix)) for spec in self.handlings.values() for path in spec.paths
        ]


Fate = Literal["passthrough", "renamed", "converted", "emulated", "not_available", "not_applied", "gateway", "extra"]


@dataclass(frozen=True)
class ParamFate:
    """What happens to one given parameter on one provider: `fate` is its handling as the binding
    declares it ("gateway" for the gateway's own fields it does not mention, "extra" for unknown
    fields passed through, "not_applied" for what the request is served without), `paths` where it
    goes upstream. The value's upstream spelling (jpeg as jpg, a tolerance as thresholds) and the
    layout's resolved values are the adapter's to write."""

    fate: Fate
    paths: tuple[str, ...] = ()


@dataclass
class ProviderView(NormalizedParams):
    """The request as one provider gets it (the parameters, as NormalizedParams), with that
    provider's wire plan and the fate of every given parameter."""

    plan: WirePlan = field(kw_only=True)
    fates: dict[str, ParamFate] = field(default_factory=dict)

    @property
    def native_output_format(self) -> str | None:
        return self.plan.native_format(self.get("output_format"))

    @property
    def mask_emulated(self) -> bool:
        """A mask is sent as one more image plus an instruction, and composited back afterwards."""
        return self.plan.emulates("mask")


def provider_views(
    params: NormalizedParams, model: ModelEntry, bindings: Mapping[str, ProviderBinding], *, strict: bool
) -> dict[str, ProviderView]:
    """Every provider's view of the request, in the order given: the one place that decides what
    happens to each parameter. A parameter no provider honours is a 400 here (see
    `refused_everywhere`), before anything is sent anywhere."""
    refused = refused_everywhere(params, model, bindings.values(), strict=strict)
    return {
        provider_id: provider_view(params, model=model, provider_id=provider_id, binding=binding, strict=refused)
        for provider_id, binding in bindings.items()
    }


def provider_view(
    params: NormalizedParams,
    *,
    model: ModelEntry,
    provider_id: str,
    binding: ProviderBinding,
    strict: set[str],
) -> ProviderView:
    """The request as one provider gets it. A parameter it declares not available is a 400 when
    it is in `strict` (no configured provider can honour it); otherwise it is left out and the
    response says so, since the router only sends it here when no better provider is left."""
    view = ProviderView(
        values=dict(params.values),
        options=dict(params.options),
        extra=params.extra,
        ignored=list(params.ignored),
        plan=WirePlan.from_binding(binding),
    )
    for name in sorted(binding.unavailable(params.values)):
        value = view.values.pop(name)
        view.options.pop(name, None)
        how = binding.handling(name)
        if _is_default(model.parameters[name], value):
            view.ignored.append(Adjustment(name, _text(value), f"ignored (not available on provider {provider_id})"))
        elif name in strict:
            raise UnsupportedParameter(
                f"Parameter '{name}' is not available for model '{model.id}' on provider '{provider_id}'"
                + (f": {how.how}." if how is not None and how.how else "."),
                param=name,
            )
        else:
            view.ignored.append(Adjustment(name, _text(value), f"not applied (provider {provider_id} lacks it)"))
    _partial_images(view, provider_id)
    view.fates = _fates(view, params)
    return view


def _partial_images(view: ProviderView, provider_id: str) -> None:
    """Partial images are sent only in a stream, and only by a provider whose upstream makes them."""
    count = view.values.get("partial_images")
    if not count:
        return
    if not view.values.get("stream"):
        reason = "not applied (only with stream: true)"
    elif not view.plan.emulates("partial_images"):
        reason = f"not applied (provider {provider_id} sends no partial images)"
    else:
        return
    view.values.pop("partial_images")
    view.ignored.append(Adjustment("partial_images", _text(count), reason))


def _fates(view: ProviderView, given: NormalizedParams) -> dict[str, ParamFate]:
    plan = view.plan
    fates = {a.param: ParamFate("not_applied") for a in view.ignored}
    for name in view.values:
        fates[name] = declared_fate(plan, name)
    fates.update({name: ParamFate("extra", (name,)) for name in given.extra})
    return fates


def declared_fate(plan: WirePlan, name: str) -> ParamFate:
    """What happens to a given known parameter on a provider: its binding's handling; else the
    gateway's own fields are the gateway's, and the model's other options go upstream as named.
    (The model pages show this for every parameter.)"""
    spec = plan.handlings.get(name)
    if spec is not None:
        return ParamFate(spec.handling, spec.paths)
    return ParamFate("gateway") if name in GATEWAY_PARAMS else ParamFate("passthrough", (name,))


def _check_required(result: NormalizedParams, model: ModelEntry, mode: Mode) -> None:
    for name, spec in model.parameters.items():
        if spec.type == "file" or spec.availability(mode) != "required":
            continue
        value = result.values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InvalidRequest(f"'{name}' is required.", param=name, code="missing_required_parameter")
