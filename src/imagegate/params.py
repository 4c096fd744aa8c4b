"""The parameter normalization engine: raw request fields -> typed values, checked against the
catalog's declarations for the model and for the provider that will serve it. Pure, no I/O.

For each field:
- the model's `parameters` say whether it is required / supported / not available per mode, and
  its type, allowed values and range;
- the provider binding says how it reaches the upstream: passthrough, renamed, converted,
  emulated (done by the gateway) or not available (a 400 naming the parameter and model);
- OpenAI's standard fields (`quality`, `style`, `background`, `moderation`, `input_fidelity`,
  `partial_images`, `stream`) are declared for every model by the catalog's defaults, with
  `if_unavailable: not_applied`: clients send them whatever the model, so where the model or
  provider lacks one the request is served without it and `adjustments` says `not applied`
  (strict mode, IMAGEGATE_STRICT_PARAMETERS, makes that a 400 again). Their types and enums are
  always checked;
- a field neither declares is passed straight through to the upstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .catalog import Mode, ModelEntry, ParamSpec, ProviderBinding
from .errors import InvalidRequest, UnsupportedParameter
from .normalize import Adjustment

# Handled by the gateway itself for every provider; never forwarded as options.
GATEWAY_PARAMS = frozenset(
    {"model", "prompt", "n", "size", "aspect_ratio", "resolution", "seed", "response_format",
     "output_format", "output_compression", "image", "images", "mask", "user", "safety_identifier"}
)
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


def _coerce(name: str, spec: ParamSpec, raw: Any) -> Any:
    """Type-check one value against its spec; form fields arrive as strings."""
    if spec.type == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise InvalidRequest(f"'{name}' must be a boolean, got {raw!r}.", param=name)
    if spec.type in ("integer", "number"):
        number = _number(name, spec, raw)
        lo, hi = spec.minimum, spec.maximum
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = f"between {_text(lo)} and {_text(hi)}" if lo is not None and hi is not None else (
                f"at least {_text(lo)}" if lo is not None else f"at most {_text(hi)}")
            raise InvalidRequest(f"'{name}' must be {bounds}, got {raw!r}.", param=name)
        return number
    if spec.type == "string":
        return _string(name, spec, raw)
    return raw


def _string(name: str, spec: ParamSpec, raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)) or (
            name in TEXT_PARAMS and not isinstance(raw, str)):
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
        result.values[name] = typed
        if name not in GATEWAY_PARAMS:
            result.options[name] = typed
    _check_required(result, model, mode)
    return result


def refused_everywhere(params: NormalizedParams, model: ModelEntry, bindings: Iterable[ProviderBinding], *,
                       strict: bool) -> set[str]:
    """The given parameters no provider of the request honours: each is a 400 unless it is a
    standard field served without it (not in `strict` mode)."""
    lacking = [b.unavailable(params.values) for b in bindings]
    names = set.intersection(*lacking) if lacking else set()
    return {n for n in names if strict or model.parameters[n].if_unavailable != "not_applied"}


def provider_view(
    params: NormalizedParams, *, model: ModelEntry, provider_id: str, binding: ProviderBinding,
    strict: set[str],
) -> NormalizedParams:
    """The request as one provider gets it. A parameter it declares not available is a 400 when
    it is in `strict` (no configured provider can honour it); otherwise it is left out and the
    response says so, since the router only sends it here when no better provider is left."""
    view = NormalizedParams(values=dict(params.values), options=dict(params.options), extra=params.extra,
                            ignored=list(params.ignored))
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
    return view


def _check_required(result: NormalizedParams, model: ModelEntry, mode: Mode) -> None:
    for name, spec in model.parameters.items():
        if spec.type == "file" or spec.availability(mode) != "required":
            continue
        value = result.values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InvalidRequest(f"'{name}' is required.", param=name, code="missing_required_parameter")
