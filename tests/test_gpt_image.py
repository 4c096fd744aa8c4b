"""Pure parts of serving OpenAI's GPT image models: prices by quality and size, and gpt-image-2's
pixel limits (a longest ratio of 3:1). The end-to-end side is tests/server/test_gpt_image_models.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imagegate.catalog import BindingPrice, PixelLimits, load_builtin_catalog
from imagegate.normalize import clamp_dimensions, resolve_layout
from imagegate.params import normalize_params
from imagegate.pricing import Charge, call_cost, image_price, total_cost
from imagegate.router import Route, plan_candidates

from .fakes.provider import FakeProvider

TABLE = {"low": {"1024x1024": 0.01, "1536x1024": 0.02}, "high": {"1024x1024": 0.1, "1536x1024": 0.2}}
PRICE = BindingPrice(per_image=0.05, by_quality_size=TABLE)


def charge(quality: str | None, size: tuple[int, int] | None, images: int = 1) -> Charge:
    return Charge(PRICE, "1K", images=images, options={} if quality is None else {"quality": quality}, size=size)


def test_a_listed_quality_and_size_costs_what_the_table_says() -> None:
    assert image_price(charge("low", (1536, 1024))) == (0.02, False)
    assert call_cost(charge("high", (1024, 1024), images=3)) == pytest.approx(0.3)
    assert total_cost([charge("low", (1024, 1024))]).estimated is False


@pytest.mark.parametrize("quality", [None, "auto"])
def test_no_quality_is_priced_at_the_dearest_and_marked_estimated(quality: str | None) -> None:
    assert image_price(charge(quality, (1536, 1024))) == (0.2, True)
    assert total_cost([charge(quality, (1536, 1024))]).estimated is True


def test_an_unlisted_size_scales_the_nearest_listed_one_by_area() -> None:
    amount, estimated = image_price(charge("high", (2048, 2048)))
    assert (amount, estimated) == (pytest.approx(0.4), True)  # 1024x1024's price, four times the area
    assert total_cost([charge("high", (2048, 2048))]).estimated is True


def test_without_a_table_or_a_size_the_tier_price_holds() -> None:
    assert image_price(
        Charge(BindingPrice(per_image=0.05, by_resolution={"1K": 0.07}), "1K", 1, size=(1024, 1024))
    ) == (0.07, False)
    assert image_price(charge("high", None)) == (0.05, False)


@pytest.mark.parametrize("size", ["1024", "1024x0", "big"])
def test_table_sizes_must_be_wxh(size: str) -> None:
    with pytest.raises(ValidationError, match="must be WxH"):
        BindingPrice(per_image=0.1, by_quality_size={"high": {size: 0.1}})


def test_the_builtin_gpt_image_prices_are_openais() -> None:
    catalog = load_builtin_catalog()
    for model_id, high_square in [
        ("gpt-image-1", 0.167),
        ("gpt-image-1.5", 0.133),
        ("gpt-image-1-mini", 0.036),
        ("gpt-image-2", 0.211),
    ]:
        model = catalog.get(model_id)
        assert model is not None
        price = model.binding_price("openai")
        assert price.by_quality_size["high"]["1024x1024"] == high_square and price.estimated is False
    latest = catalog.get("chatgpt-image-latest")
    assert latest is not None and latest.binding_price("openai").estimated is True


LIMITS = PixelLimits(
    min_side=16, max_side=3840, max_pixels=8_294_400, min_pixels=655_360, multiple_of=16, max_aspect_ratio=3.0
)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ((4000, 1000), (3456, 1152)),  # 4:1 -> 3:1, area kept
        ((1000, 4000), (1152, 3456)),
        ((100, 5000), (480, 1408)),  # 50:1, and below the pixel minimum: 3:1 or less, scaled up
        ((3840, 2160), (3840, 2160)),  # inside every limit: unchanged
    ],
)
def test_a_shape_past_the_longest_ratio_is_brought_to_it(asked: tuple[int, int], expected: tuple[int, int]) -> None:
    width, height = clamp_dimensions(*asked, LIMITS)
    assert (width, height) == expected
    assert max(width, height) <= 3 * min(width, height) and width % 16 == height % 16 == 0


def test_gpt_image_2_layouts_stay_within_openais_rules() -> None:
    model = load_builtin_catalog().get("gpt-image-2")
    assert model is not None
    for ratio in model.supported_ratios():
        for tier in ("1K", "2K", "3K", "4K"):
            layout = resolve_layout(model, aspect_ratio=ratio, resolution=tier)
            w, h = layout.width, layout.height
            assert w % 16 == h % 16 == 0 and max(w, h) <= 3840 and max(w, h) <= 3 * min(w, h), (ratio, tier)
            assert 655_360 <= w * h <= 8_294_400, (ratio, tier)


def test_a_tier_clamped_twice_is_one_adjustment() -> None:
    """4K is mapped to 3K, and at 3:1 the pixel limits bring 3K down to the 2K tier: one entry."""
    model = load_builtin_catalog().get("gpt-image-2")
    assert model is not None
    layout = resolve_layout(model, aspect_ratio="3:1", resolution="4K")
    assert (layout.width, layout.height) == (3840, 1280)
    assert [(a.param, a.requested, a.applied) for a in layout.adjustments] == [("resolution", "4K", "2K")]


@pytest.mark.parametrize(
    ("model_id", "provider_id", "fmt", "expected"),
    [
        ("gpt-image-2", "openai", "jpeg", True),  # made by OpenAI with the compression sent
        ("gpt-image-2", "openai", "png", True),
        ("gpt-image-2", "openai", "avif", False),  # not native: the gateway converts, at that compression
        ("gemini-3-pro-image-preview", "fal", "jpeg", False),  # fal's compression is the gateway's own
    ],
)
def test_only_an_upstream_sent_the_compression_keeps_its_bytes(
    model_id: str, provider_id: str, fmt: str, expected: bool
) -> None:
    model = load_builtin_catalog().get(model_id)
    assert model is not None
    binding = model.providers[provider_id]
    route = Route(model, provider_id, binding, FakeProvider(provider_id))
    (candidate,) = plan_candidates(
        normalize_params({"prompt": "p", "output_format": fmt, "output_compression": 50}, model=model, mode="t2i"),
        [route],
        strict=False,
        has_mask=False,
    )
    assert candidate.compressed_upstream is expected
