"""Size and layout matching: pure functions, no I/O.

Precedence: `size` (WxH) > `aspect_ratio` + `resolution` > `aspect_ratio` > `resolution` > model default.
`size` as W:H is the same as `aspect_ratio`. Shapes match by |ln(r1/r2)|, scales by log distance of
pixel counts (for K tiers that is the log distance of the number), ties go to the larger value.
Every value that ends up different from what was asked is reported as an `Adjustment`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .catalog import ModelEntry, PixelLimits
from .errors import InvalidRequest

# Float noise must not decide a tie that the spec resolves "to the larger".
_TIE_EPSILON = 1e-9
# ASCII digits and plain spaces only, anchored with \Z: values end up in a response header.
_NUMBER = r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_SIZE_PIXELS = re.compile(rf"^ *{_NUMBER} *[x×X*] *{_NUMBER} *\Z")
_RATIO = re.compile(rf"^ *{_NUMBER} *[:/] *{_NUMBER} *\Z")
_K_TIER = re.compile(rf"^ *{_NUMBER} *[kK] *\Z")
_MP_TIER = re.compile(rf"^ *{_NUMBER} *(?:mp|MP|Mp|megapixels?)? *\Z")


@dataclass(frozen=True)
class Adjustment:
    """A request value the gateway changed or did not apply, and why."""

    param: str
    requested: str
    applied: str

    def header_value(self) -> str:
        # unicode_escape keeps a header to printable ASCII whatever the client sent.
        text = f"{self.param}={self.requested}->{self.applied}"
        return text.encode("unicode_escape").decode("ascii").replace(";", "\\x3b")


@dataclass(frozen=True)
class Layout:
    aspect_ratio: str
    resolution: str
    width: int
    height: int
    adjustments: tuple[Adjustment, ...] = ()


# --- parsing -------------------------------------------------------------------------------


def _sane(value: float) -> bool:
    """Positive, and small enough that ratios and logs of it stay finite."""
    return 0 < value < 1e12


def parse_ratio(text: str, param: str = "aspect_ratio") -> float:
    match = _RATIO.match(text)
    if not match:
        raise InvalidRequest(f"Invalid {param} {text!r}: expected W:H with positive numbers, e.g. '16:9'.", param=param)
    w, h = float(match.group(1)), float(match.group(2))
    if not (_sane(w) and _sane(h)):
        raise InvalidRequest(f"Invalid {param} {text!r}: both sides must be positive.", param=param)
    return w / h


def parse_pixels(text: str) -> tuple[int, int] | None:
    """'1024x768' -> (1024, 768); None when `text` is not of the WxH form."""
    match = _SIZE_PIXELS.match(text)
    if not match:
        return None
    w, h = float(match.group(1)), float(match.group(2))
    if not (_sane(w) and _sane(h)) or w != int(w) or h != int(h):
        raise InvalidRequest(f"Invalid size {text!r}: width and height must be positive whole pixels.", param="size")
    return int(w), int(h)


def tier_pixels(tier: str, kind: str) -> float:
    """The pixel count a catalog tier stands for: 'NK' is (N*1024)^2, megapixel tiers N*10^6."""
    if kind == "k":
        match = _K_TIER.match(tier)
        if not match:
            raise ValueError(f"not a K tier: {tier!r}")
        return (float(match.group(1)) * 1024) ** 2
    return float(tier) * 1_000_000


def parse_resolution(text: str) -> float | None:
    """A requested tier as a pixel count; None for 'auto'. Accepts '2K', '0.5k', '1MP', '0.25'."""
    cleaned = text.strip()
    if cleaned.lower() == "auto":
        return None
    match = _K_TIER.match(cleaned)
    if match:
        side = float(match.group(1)) * 1024
        pixels = side * side  # not ** 2: a 400-digit tier overflows to inf (a 400 below), not OverflowError
    else:
        match = _MP_TIER.match(cleaned)
        if not match:
            raise InvalidRequest(
                f"Invalid resolution {text!r}: expected 'auto', a K tier such as '1K' or '4K', "
                "or megapixels such as '0.25' or '1MP'.",
                param="resolution",
            )
        pixels = float(match.group(1)) * 1_000_000
    if not _sane(pixels):
        raise InvalidRequest(f"Invalid resolution {text!r}: must be a finite number above zero.", param="resolution")
    return pixels


# --- matching ------------------------------------------------------------------------------


def _nearest(target: float, candidates: list[tuple[str, float]]) -> str:
    """Candidate nearest to `target` by |ln(a/b)|; ties go to the larger value."""
    best_name, best_value, best_distance = "", 0.0, math.inf
    for name, value in candidates:
        distance = abs(math.log(target / value))
        closer = distance < best_distance - _TIE_EPSILON
        tie_but_larger = abs(distance - best_distance) <= _TIE_EPSILON and value > best_value
        if closer or tie_but_larger:
            best_name, best_value, best_distance = name, value, distance
    return best_name


def ratio_value(ratio: str) -> float:
    w, h = ratio.split(":")
    return float(w) / float(h)


def nearest_ratio(target: float, supported: list[str]) -> str:
    return _nearest(target, [(r, ratio_value(r)) for r in supported])


def nearest_tier(pixels: float, tiers: list[str], kind: str) -> str:
    return _nearest(pixels, [(t, tier_pixels(t, kind)) for t in tiers])


def reduced_ratio(width: int, height: int) -> str:
    fraction = Fraction(width, height)
    return f"{fraction.numerator}:{fraction.denominator}"


# --- dimension clamping for flexible models -----------------------------------------------


def _fits(w: int, h: int, limits: PixelLimits) -> bool:
    return (
        limits.min_side <= min(w, h)
        and max(w, h) <= limits.max_side
        and limits.min_pixels <= w * h <= limits.max_pixels
        and (limits.max_aspect_ratio is None or max(w, h) <= min(w, h) * limits.max_aspect_ratio)
    )


def _within_ratio(width: float, height: float, limits: PixelLimits) -> tuple[float, float]:
    """A shape past the model's longest ratio (gpt-image-2: 3:1) becomes that ratio, area kept."""
    limit = limits.max_aspect_ratio
    if limit is None or max(width, height) <= min(width, height) * limit:
        return width, height
    area = width * height
    long_side, short_side = math.sqrt(area * limit), math.sqrt(area / limit)
    return (long_side, short_side) if width >= height else (short_side, long_side)


def _scale_into(width: float, height: float, limits: PixelLimits) -> float:
    """The factor that brings (width, height) inside the limits; maxima win over minima."""
    scale = 1.0
    longest, shortest = max(width, height), min(width, height)
    if shortest < limits.min_side:
        scale = limits.min_side / shortest
    if limits.min_pixels and width * height * scale * scale < limits.min_pixels:
        scale = max(scale, math.sqrt(limits.min_pixels / (width * height)))
    if longest * scale > limits.max_side:
        scale = limits.max_side / longest
    if width * height * scale * scale > limits.max_pixels:
        scale = math.sqrt(limits.max_pixels / (width * height))
    return scale


def clamp_dimensions(width: float, height: float, limits: PixelLimits) -> tuple[int, int]:
    """Scale (width, height) into the limits keeping the aspect ratio, then round each side to
    the multiple: of the floor/ceil combinations that fit, the one closest in ratio wins
    (then the one closest in area). A shape past `max_aspect_ratio` is first brought to it."""
    width, height = _within_ratio(width, height, limits)
    scale = _scale_into(width, height, limits)
    w, h, m = width * scale, height * scale, limits.multiple_of
    wanted = math.log(width / height)
    options = {
        (max(m, math.floor(w / m) * m) + dw * m, max(m, math.floor(h / m) * m) + dh * m)
        for dw in (0, 1)
        for dh in (0, 1)
    }
    fitting = [(cw, ch) for cw, ch in options if _fits(cw, ch, limits)]
    if fitting:
        area = w * h
        return min(
            fitting, key=lambda c: (round(abs(math.log(c[0] / c[1]) - wanted), 12), abs(math.log(c[0] * c[1] / area)))
        )
    # Limits too tight for this ratio on the grid: keep the maxima, give up on the ratio.
    cw, ch = max(m, math.floor(w / m) * m), max(m, math.floor(h / m) * m)
    floor_side = math.floor(limits.max_side / m) * m
    cw, ch = min(cw, floor_side), min(ch, floor_side)
    min_side = math.ceil(limits.min_side / m) * m
    return max(cw, min(min_side, floor_side)), max(ch, min(min_side, floor_side))


# --- the resolver --------------------------------------------------------------------------


def _table_dimensions(model: ModelEntry, ratio: str, tier: str) -> tuple[int, int] | None:
    for entry in model.sizes or []:
        if entry.aspect_ratio == ratio and entry.resolution == tier:
            return entry.width, entry.height
    return None


def _tiers_with_ratio(model: ModelEntry, ratio: str) -> list[str]:
    return [t for t in model.resolution_tiers if _table_dimensions(model, ratio, t) is not None]


def _layout_from_pixels(model: ModelEntry, w: int, h: int, text: str) -> Layout:
    """`size` as WxH: it sets both shape and scale."""
    if model.sizes is not None:
        ratio = nearest_ratio(w / h, model.supported_ratios())
        candidates = []
        for tier in _tiers_with_ratio(model, ratio):
            tw, th = _table_dimensions(model, ratio, tier)  # type: ignore[misc]
            candidates.append((tier, float(tw * th)))
        tier = _nearest(float(w * h), candidates)
        width, height = _table_dimensions(model, ratio, tier)  # type: ignore[misc]
    else:
        assert model.pixel_limits is not None
        width, height = clamp_dimensions(w, h, model.pixel_limits)
        ratio = reduced_ratio(width, height)
        tier = nearest_tier(float(width * height), model.resolution_tiers, model.resolution_kind)
    adjustments: tuple[Adjustment, ...] = ()
    if (width, height) != (w, h):
        adjustments = (Adjustment("size", text.strip(), f"{width}x{height}"),)
    return Layout(ratio, tier, width, height, adjustments)


def _flexible_dimensions(model: ModelEntry, ratio: float, tier: str) -> tuple[int, int]:
    assert model.pixel_limits is not None
    pixels = tier_pixels(tier, model.resolution_kind)
    return clamp_dimensions(math.sqrt(pixels * ratio), math.sqrt(pixels / ratio), model.pixel_limits)


def resolve_layout(
    model: ModelEntry,
    *,
    size: str | None = None,
    aspect_ratio: str | None = None,
    resolution: str | None = None,
    input_shape: tuple[int, int] | None = None,
) -> Layout:
    """Turn the request's size, aspect_ratio and resolution into one supported output layout.

    `input_shape` is the (width, height) of an edit's first image: with no shape asked for,
    an edit keeps its shape, while text-to-image uses the model's default ratio.
    """
    adjustments: list[Adjustment] = []
    size = size.strip() if size else None
    if size and size.lower() == "auto":
        size = None

    if size is not None:
        pixels = parse_pixels(size)
        if pixels is not None:
            _check_ignored(aspect_ratio, resolution)
            for ignored, value in (("aspect_ratio", aspect_ratio), ("resolution", resolution)):
                if value and value.strip().lower() != "auto":
                    adjustments.append(Adjustment(ignored, value.strip(), "ignored (size takes precedence)"))
            layout = _layout_from_pixels(model, *pixels, size)
            return Layout(
                layout.aspect_ratio,
                layout.resolution,
                layout.width,
                layout.height,
                tuple(adjustments) + layout.adjustments,
            )
        if _RATIO.match(size):
            parse_ratio(size, "size")  # a bad ratio here is the size's fault
            _check_ignored(aspect_ratio, None)
            if aspect_ratio and aspect_ratio.strip().lower() != "auto":
                adjustments.append(Adjustment("aspect_ratio", aspect_ratio.strip(), "ignored (size takes precedence)"))
            return _with(
                resolve_layout(model, aspect_ratio=size, resolution=resolution, input_shape=input_shape),
                adjustments,
                rename=("aspect_ratio", "size"),
            )
        raise InvalidRequest(
            f"Invalid size {size!r}: expected WxH pixels such as '1024x1024', a ratio such as '16:9', or 'auto'.",
            param="size",
        )

    # Shape.
    supported = model.supported_ratios()
    if aspect_ratio and aspect_ratio.strip().lower() != "auto":
        wanted = parse_ratio(aspect_ratio)
        ratio = nearest_ratio(wanted, supported)
        # '32:18' is 16:9 exactly: a different spelling of the same shape is no adjustment.
        if abs(ratio_value(ratio) - wanted) > _TIE_EPSILON:
            adjustments.append(Adjustment("aspect_ratio", aspect_ratio.strip(), ratio))
    elif input_shape is not None:
        wanted = input_shape[0] / input_shape[1]
        ratio = nearest_ratio(wanted, supported)
    else:
        wanted = ratio_value(model.default_aspect_ratio)
        ratio = nearest_ratio(wanted, supported)

    # Scale.
    tier = model.default_resolution
    if resolution:
        requested_pixels = parse_resolution(resolution)
        if requested_pixels is not None:
            tiers = model.resolution_tiers if model.sizes is None else _tiers_with_ratio(model, ratio)
            tier = nearest_tier(requested_pixels, tiers, model.resolution_kind)
            if abs(tier_pixels(tier, model.resolution_kind) - requested_pixels) > 1e-6 * requested_pixels:
                adjustments.append(Adjustment("resolution", resolution.strip(), tier))

    if model.sizes is not None:
        dims = _table_dimensions(model, ratio, tier)
        if dims is None:  # a sparse table: fall back to the ratio's nearest tier
            tier = nearest_tier(
                tier_pixels(tier, model.resolution_kind), _tiers_with_ratio(model, ratio), model.resolution_kind
            )
            dims = _table_dimensions(model, ratio, tier)
        assert dims is not None
        width, height = dims
    else:
        width, height = _flexible_dimensions(model, ratio_value(ratio), tier)
        # Clamping to the pixel limits can land nearer another tier: name the one delivered.
        delivered = nearest_tier(float(width * height), model.resolution_tiers, model.resolution_kind)
        if delivered != tier:
            # One entry per parameter: what was asked, and what was delivered in the end.
            adjustments = [a for a in adjustments if a.param != "resolution"]
            adjustments.append(Adjustment("resolution", resolution.strip() if resolution else tier, delivered))
            tier = delivered
    return Layout(ratio, tier, width, height, tuple(adjustments))


def _check_ignored(aspect_ratio: str | None, resolution: str | None) -> None:
    """Values that `size` overrides must still be valid: a typo is a 400, not silently dropped."""
    if aspect_ratio and aspect_ratio.strip().lower() != "auto":
        parse_ratio(aspect_ratio)
    if resolution:
        parse_resolution(resolution)


def _with(layout: Layout, extra: list[Adjustment], rename: tuple[str, str]) -> Layout:
    """Prepend `extra` and report adjustments of `rename[0]` under the name the user used."""
    old, new = rename
    renamed = tuple(Adjustment(new, a.requested, a.applied) if a.param == old else a for a in layout.adjustments)
    return Layout(layout.aspect_ratio, layout.resolution, layout.width, layout.height, tuple(extra) + renamed)
