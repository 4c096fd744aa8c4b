"""Size / aspect_ratio / resolution normalization (imagegate.normalize.resolve_layout).

The 30 rows of the Nano Banana Pro size table are copied from the Nano Banana Pro
product page (the spec) by hand, on purpose independent of
data/models.json, so a typo in the catalog fails here.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imagegate.catalog import ModelEntry, PixelLimits, load_builtin_catalog
from imagegate.errors import InvalidRequest
from imagegate.normalize import Adjustment, Layout, clamp_dimensions, resolve_layout

# --- the spec's size table, verbatim: (aspect_ratio, resolution, width, height) -------------

SPEC_ROWS: list[tuple[str, str, int, int]] = [
    # 1K
    ("4:3", "1K", 1183, 887),
    ("4:5", "1K", 916, 1145),
    ("5:4", "1K", 1145, 916),
    ("1:1", "1K", 1024, 1024),
    ("3:4", "1K", 887, 1182),
    ("2:3", "1K", 836, 1254),
    ("3:2", "1K", 1254, 836),
    ("9:16", "1K", 768, 1365),
    ("16:9", "1K", 1365, 768),
    ("21:9", "1K", 1563, 670),
    # 2K
    ("21:9", "2K", 3129, 1341),
    ("3:4", "2K", 1774, 2365),
    ("4:3", "2K", 2365, 1774),
    ("4:5", "2K", 1832, 2290),
    ("5:4", "2K", 2290, 1832),
    ("9:16", "2K", 1536, 2731),
    ("16:9", "2K", 2731, 1536),
    ("1:1", "2K", 2048, 2048),
    ("2:3", "2K", 1672, 2508),
    ("3:2", "2K", 2508, 1672),
    # 4K
    ("3:4", "4K", 3548, 4730),
    ("2:3", "4K", 3345, 5017),
    ("5:4", "4K", 4580, 3664),
    ("1:1", "4K", 4096, 4096),
    ("9:16", "4K", 3072, 5461),
    ("16:9", "4K", 5461, 3072),
    ("4:3", "4K", 4729, 3547),
    ("3:2", "4K", 5016, 3344),
    ("4:5", "4K", 3663, 4579),
    ("21:9", "4K", 6256, 2681),
]
SPEC_RATIOS = sorted({r for r, _, _, _ in SPEC_ROWS})
SPEC_TIERS = ["1K", "2K", "4K"]
SPEC_DIMS = {(r, t): (w, h) for r, t, w, h in SPEC_ROWS}
TIER_NUMBER = {"1K": 1.0, "2K": 2.0, "4K": 4.0}

# Distances equal within this are ties (the implementation uses 1e-9 on log distances).
TIE = 1e-9


def rval(ratio: str) -> float:
    w, h = ratio.split(":")
    return float(w) / float(h)


def log_dist(a: float, b: float) -> float:
    return abs(math.log(a / b))


def row_id(row: tuple[str, str, int, int]) -> str:
    return f"{row[0]}-{row[1]}-{row[2]}x{row[3]}"


# --- models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nbp() -> ModelEntry:
    return _real_model()


def _real_model() -> ModelEntry:
    model = load_builtin_catalog().get("gemini-3-pro-image-preview")
    assert model is not None
    return model


def make_model(**fields) -> ModelEntry:
    base = {
        "id": "synthetic",
        "name": "Synthetic",
        "modes": ["t2i", "edit"],
        "resolution_tiers": ["1K"],
        "default_resolution": "1K",
        "price": {"per_image": 0.0},
        "parameters": {},
        "providers": {},
    }
    base.update(fields)
    return ModelEntry.model_validate(base)


def table(*rows: tuple[str, str, int, int]) -> list[dict]:
    return [{"aspect_ratio": r, "resolution": t, "width": w, "height": h} for r, t, w, h in rows]


FLEX_LIMITS = PixelLimits(max_side=2048, max_pixels=2_000_000, min_side=256, multiple_of=64)
FLEX_RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16"]


def flex_model() -> ModelEntry:
    return make_model(
        id="flex",
        resolution_tiers=["0.5K", "1K"],
        default_resolution="1K",
        pixel_limits=FLEX_LIMITS.model_dump(),
        aspect_ratios=FLEX_RATIOS,
    )


def ignored(param: str, value: str) -> Adjustment:
    return Adjustment(param, value, "ignored (size takes precedence)")


# =============================================================================================
# The spec's size table, row by row
# =============================================================================================


def test_catalog_table_is_exactly_the_spec_table(nbp: ModelEntry) -> None:
    rows = sorted((s.aspect_ratio, s.resolution, s.width, s.height) for s in nbp.sizes or [])
    assert rows == sorted(SPEC_ROWS)
    assert nbp.resolution_tiers == SPEC_TIERS
    assert nbp.default_resolution == "1K"
    assert nbp.default_aspect_ratio == "1:1"


@pytest.mark.parametrize("row", SPEC_ROWS, ids=row_id)
def test_size_wxh_gives_the_row(nbp: ModelEntry, row) -> None:
    ratio, tier, w, h = row
    assert resolve_layout(nbp, size=f"{w}x{h}") == Layout(ratio, tier, w, h, ())


@pytest.mark.parametrize("row", SPEC_ROWS, ids=row_id)
def test_aspect_ratio_plus_resolution_gives_the_row(nbp: ModelEntry, row) -> None:
    ratio, tier, w, h = row
    assert resolve_layout(nbp, aspect_ratio=ratio, resolution=tier) == Layout(ratio, tier, w, h, ())


@pytest.mark.parametrize("row", SPEC_ROWS, ids=row_id)
def test_size_ratio_plus_resolution_gives_the_row(nbp: ModelEntry, row) -> None:
    ratio, tier, w, h = row
    assert resolve_layout(nbp, size=ratio, resolution=tier) == Layout(ratio, tier, w, h, ())


@pytest.mark.parametrize("row", SPEC_ROWS, ids=row_id)
def test_size_wxh_wins_over_conflicting_ratio_and_resolution(nbp: ModelEntry, row) -> None:
    ratio, tier, w, h = row
    other_ratio = "21:9" if ratio != "21:9" else "9:16"
    other_tier = "4K" if tier != "4K" else "1K"
    layout = resolve_layout(nbp, size=f"{w}x{h}", aspect_ratio=other_ratio, resolution=other_tier)
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == (ratio, tier, w, h)
    assert set(layout.adjustments) == {ignored("aspect_ratio", other_ratio), ignored("resolution", other_tier)}


# =============================================================================================
# Shape matching
# =============================================================================================


def test_seven_to_one_on_a_4_1_and_8_1_table_gives_8_1() -> None:
    model = make_model(sizes=table(("4:1", "1K", 2048, 512), ("8:1", "1K", 2896, 362)))
    layout = resolve_layout(model, aspect_ratio="7:1")
    assert (layout.aspect_ratio, layout.width, layout.height) == ("8:1", 2896, 362)
    assert layout.adjustments == (Adjustment("aspect_ratio", "7:1", "8:1"),)
    # The same via size, as a ratio and as pixels.
    assert resolve_layout(model, size="7:1").aspect_ratio == "8:1"
    assert resolve_layout(model, size="7:1").adjustments == (Adjustment("size", "7:1", "8:1"),)
    px = resolve_layout(model, size="2800x400")
    assert (px.aspect_ratio, px.width, px.height) == ("8:1", 2896, 362)
    assert px.adjustments == (Adjustment("size", "2800x400", "2896x362"),)


def test_seven_to_one_on_a_flexible_4_1_and_8_1_model_gives_8_1() -> None:
    model = make_model(pixel_limits=FLEX_LIMITS.model_dump(), aspect_ratios=["4:1", "8:1"])
    layout = resolve_layout(model, aspect_ratio="7:1")
    assert layout.aspect_ratio == "8:1"
    assert layout.adjustments == (Adjustment("aspect_ratio", "7:1", "8:1"),)
    # 8:1 at 1K does not fit max_side=2048: clamped, still about 8:1 (one 64-px step at most).
    assert layout.width <= 2048 and layout.width % 64 == 0 and layout.height % 64 == 0
    assert layout.width / layout.height == pytest.approx(8, rel=0.25)
    # Just under the geometric mean of 4 and 8 (sqrt(32) = 5.657) still goes to 4:1.
    assert resolve_layout(model, aspect_ratio="5.6:1").aspect_ratio == "4:1"
    assert resolve_layout(model, aspect_ratio="5.7:1").aspect_ratio == "8:1"


def test_exact_ratio_tie_goes_to_the_larger_ratio() -> None:
    model = make_model(sizes=table(("1:2", "1K", 724, 1448), ("2:1", "1K", 1448, 724)))
    layout = resolve_layout(model, aspect_ratio="1:1")
    assert (layout.aspect_ratio, layout.width, layout.height) == ("2:1", 1448, 724)
    assert layout.adjustments == (Adjustment("aspect_ratio", "1:1", "2:1"),)
    # Same tie through size=WxH, size=W:H, the default 1:1 and an edit's square input.
    assert resolve_layout(model, size="1000x1000").aspect_ratio == "2:1"
    assert resolve_layout(model, size="3:3").aspect_ratio == "2:1"
    assert resolve_layout(model).aspect_ratio == "2:1"
    assert resolve_layout(model, input_shape=(640, 640)).aspect_ratio == "2:1"
    # Listing order must not matter.
    flipped = make_model(sizes=table(("2:1", "1K", 1448, 724), ("1:2", "1K", 724, 1448)))
    assert resolve_layout(flipped, aspect_ratio="1:1").aspect_ratio == "2:1"


def test_ratio_just_off_the_tie_goes_to_the_nearer() -> None:
    model = make_model(sizes=table(("1:2", "1K", 724, 1448), ("2:1", "1K", 1448, 724)))
    assert resolve_layout(model, aspect_ratio="99:100").aspect_ratio == "1:2"
    assert resolve_layout(model, aspect_ratio="100:99").aspect_ratio == "2:1"


def test_equivalent_spelling_of_a_supported_ratio_is_no_adjustment(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, aspect_ratio="32:18")
    assert (layout.aspect_ratio, layout.width, layout.height, layout.adjustments) == ("16:9", 1365, 768, ())
    assert resolve_layout(nbp, aspect_ratio="1.5:1").adjustments == ()
    assert resolve_layout(nbp, aspect_ratio="1.5:1").aspect_ratio == "3:2"


def test_unsupported_ratio_maps_to_nearest_and_is_reported(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, aspect_ratio="2:1")  # ln(2/(16/9)) = 0.118 < ln((7/3)/2) = 0.154
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == ("16:9", "1K", 1365, 768)
    assert layout.adjustments == (Adjustment("aspect_ratio", "2:1", "16:9"),)
    tall = resolve_layout(nbp, aspect_ratio="1:4")
    assert tall.aspect_ratio == "9:16"
    assert tall.adjustments == (Adjustment("aspect_ratio", "1:4", "9:16"),)


# =============================================================================================
# Scale matching
# =============================================================================================


def test_exact_tier_tie_goes_to_the_larger_tier() -> None:
    model = make_model(
        resolution_tiers=["1K", "4K"],
        sizes=table(("1:1", "1K", 1024, 1024), ("1:1", "4K", 4096, 4096)),
    )
    layout = resolve_layout(model, resolution="2K")
    assert (layout.resolution, layout.width, layout.height) == ("4K", 4096, 4096)
    assert layout.adjustments == (Adjustment("resolution", "2K", "4K"),)
    # Pixel tie through size=WxH: 2048^2 is the geometric mean of 1024^2 and 4096^2.
    px = resolve_layout(model, size="2048x2048")
    assert (px.resolution, px.width, px.height) == ("4K", 4096, 4096)
    assert px.adjustments == (Adjustment("size", "2048x2048", "4096x4096"),)
    # Just below the tie goes down.
    assert resolve_layout(model, resolution="1.99K").resolution == "1K"
    assert resolve_layout(model, size="2040x2040").resolution == "1K"


@pytest.mark.parametrize(
    ("requested", "tier", "adjusted"),
    [
        ("3K", "4K", True),  # ln(4/3)=0.29 < ln(3/2)=0.41
        ("2.9K", "4K", True),  # ln(4/2.9)=0.32 < ln(2.9/2)=0.37
        ("2.8K", "2K", True),  # ln(2.8/2)=0.336 < ln(4/2.8)=0.357
        ("0.5K", "1K", True),
        ("1.4K", "1K", True),
        ("1.5K", "2K", True),
        ("10K", "4K", True),
        ("4k", "4K", False),
        ("2k", "2K", False),
        (" 2K ", "2K", False),
        ("1K", "1K", False),
        ("auto", "1K", False),
        ("AUTO", "1K", False),
    ],
)
def test_resolution_matching(nbp: ModelEntry, requested: str, tier: str, adjusted: bool) -> None:
    layout = resolve_layout(nbp, resolution=requested)
    assert layout.resolution == tier
    assert (layout.aspect_ratio, layout.width, layout.height) == ("1:1", *SPEC_DIMS[("1:1", tier)])
    expected = (Adjustment("resolution", requested.strip(), tier),) if adjusted else ()
    assert layout.adjustments == expected


def test_megapixel_tiers_on_a_table_model() -> None:
    model = make_model(
        resolution_kind="megapixels",
        resolution_tiers=["0.25", "1"],
        default_resolution="1",
        sizes=table(("1:1", "0.25", 512, 512), ("1:1", "1", 1024, 1024)),
    )
    one_k = resolve_layout(model, resolution="1K")  # (1024)^2 = 1.05 MP -> "1"
    assert (one_k.resolution, one_k.width, one_k.height) == ("1", 1024, 1024)
    assert one_k.adjustments == (Adjustment("resolution", "1K", "1"),)
    small = resolve_layout(model, resolution="0.3")
    assert (small.resolution, small.width, small.height) == ("0.25", 512, 512)
    assert small.adjustments == (Adjustment("resolution", "0.3", "0.25"),)
    exact = resolve_layout(model, resolution="0.25")
    assert (exact.resolution, exact.adjustments) == ("0.25", ())
    assert resolve_layout(model, resolution="1MP") == Layout("1:1", "1", 1024, 1024, ())
    # Geometric mean of 0.25 and 1 MP is 0.5 MP: a tie, goes to the larger.
    assert resolve_layout(model, resolution="0.5").resolution == "1"
    assert resolve_layout(model, resolution="0.49").resolution == "0.25"
    assert resolve_layout(model).resolution == "1"


def test_megapixel_tiers_on_a_flexible_model() -> None:
    model = make_model(
        resolution_kind="megapixels",
        resolution_tiers=["0.25", "1"],
        default_resolution="1",
        pixel_limits=FLEX_LIMITS.model_dump(),
        aspect_ratios=["1:1", "16:9"],
    )
    one_k = resolve_layout(model, resolution="1K")
    assert one_k.resolution == "1"
    assert one_k.adjustments == (Adjustment("resolution", "1K", "1"),)
    assert one_k.width * one_k.height == pytest.approx(1_000_000, rel=0.15)
    small = resolve_layout(model, resolution="0.3", aspect_ratio="16:9")
    assert (small.resolution, small.aspect_ratio) == ("0.25", "16:9")
    assert small.adjustments == (Adjustment("resolution", "0.3", "0.25"),)
    assert small.width * small.height == pytest.approx(250_000, rel=0.25)
    assert small.width > small.height


def test_sparse_table_uses_the_tiers_that_exist_for_the_ratio() -> None:
    model = make_model(
        resolution_tiers=["1K", "2K", "4K"],
        sizes=table(
            ("1:1", "1K", 1024, 1024),
            ("1:1", "2K", 2048, 2048),
            ("1:1", "4K", 4096, 4096),
            ("2:1", "4K", 5792, 2896),
        ),
    )
    layout = resolve_layout(model, aspect_ratio="2:1", resolution="1K")
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == ("2:1", "4K", 5792, 2896)
    assert layout.adjustments == (Adjustment("resolution", "1K", "4K"),)
    # No resolution asked: the default 1K is missing for 2:1, so the nearest existing tier is used.
    default = resolve_layout(model, aspect_ratio="2:1")
    assert (default.resolution, default.width, default.height) == ("4K", 5792, 2896)
    # size=WxH picks among the tiers that exist for the matched ratio.
    px = resolve_layout(model, size="1000x500")
    assert (px.aspect_ratio, px.resolution, px.width, px.height) == ("2:1", "4K", 5792, 2896)
    assert px.adjustments == (Adjustment("size", "1000x500", "5792x2896"),)


# =============================================================================================
# Precedence and defaults
# =============================================================================================


def test_no_parameters_gives_the_default(nbp: ModelEntry) -> None:
    assert resolve_layout(nbp) == Layout("1:1", "1K", 1024, 1024, ())


def test_size_wxh_beats_ratio_and_resolution_and_reports_both_ignored(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, size="1365x768", aspect_ratio="1:1", resolution="4K")
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == ("16:9", "1K", 1365, 768)
    assert set(layout.adjustments) == {ignored("aspect_ratio", "1:1"), ignored("resolution", "4K")}
    assert len(layout.adjustments) == 2


def test_size_wxh_beats_an_edit_input_shape(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, size="1365x768", input_shape=(600, 800))
    assert layout == Layout("16:9", "1K", 1365, 768, ())


def test_size_wxh_off_table_reports_the_size_and_the_ignored_params(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, size="1920x1080", resolution="1K")
    # 1920x1080 is 16:9; 2.07 MP is nearer 1365x768 (1.05 MP) than 2731x1536 (4.19 MP) by log distance.
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == ("16:9", "1K", 1365, 768)
    assert set(layout.adjustments) == {ignored("resolution", "1K"), Adjustment("size", "1920x1080", "1365x768")}


def test_size_ratio_beats_aspect_ratio_but_resolution_still_applies(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, size="16:9", aspect_ratio="1:1", resolution="2K")
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == ("16:9", "2K", 2731, 1536)
    assert layout.adjustments == (ignored("aspect_ratio", "1:1"),)


def test_size_ratio_adjustments_are_reported_under_size(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, size="2:1", resolution="3K")
    assert (layout.aspect_ratio, layout.resolution, layout.width, layout.height) == ("16:9", "4K", 5461, 3072)
    assert set(layout.adjustments) == {Adjustment("size", "2:1", "16:9"), Adjustment("resolution", "3K", "4K")}


def test_size_ratio_beats_an_edit_input_shape(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, size="3:2", input_shape=(600, 800))
    assert layout == Layout("3:2", "1K", 1254, 836, ())


def test_aspect_ratio_alone_uses_the_default_tier(nbp: ModelEntry) -> None:
    assert resolve_layout(nbp, aspect_ratio="9:16") == Layout("9:16", "1K", 768, 1365, ())


def test_resolution_alone_uses_1_1(nbp: ModelEntry) -> None:
    assert resolve_layout(nbp, resolution="4K") == Layout("1:1", "4K", 4096, 4096, ())


def test_auto_aspect_ratio_is_no_shape(nbp: ModelEntry) -> None:
    assert resolve_layout(nbp, aspect_ratio="auto", resolution="2K") == Layout("1:1", "2K", 2048, 2048, ())
    assert resolve_layout(nbp, aspect_ratio="auto", input_shape=(800, 600)) == Layout("4:3", "1K", 1183, 887, ())


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"aspect_ratio": "16:9"},
        {"resolution": "2K"},
        {"aspect_ratio": "3:4", "resolution": "4K"},
        {"input_shape": (600, 800)},
        {"input_shape": (1920, 1080), "resolution": "2K"},
        {"aspect_ratio": "7:3", "resolution": "3K"},
    ],
)
@pytest.mark.parametrize("spelling", ["auto", "AUTO", " auto "])
def test_size_auto_is_like_no_size(nbp: ModelEntry, kwargs: dict, spelling: str) -> None:
    assert resolve_layout(nbp, size=spelling, **kwargs) == resolve_layout(nbp, **kwargs)


def test_empty_strings_are_like_absent_parameters(nbp: ModelEntry) -> None:
    assert resolve_layout(nbp, size="", aspect_ratio="", resolution="") == Layout("1:1", "1K", 1024, 1024, ())


# =============================================================================================
# Edits keep the input shape
# =============================================================================================


@pytest.mark.parametrize(
    ("shape", "ratio"),
    [
        ((600, 800), "3:4"),
        ((800, 600), "4:3"),
        ((1920, 1080), "16:9"),
        ((1080, 1920), "9:16"),
        ((500, 500), "1:1"),
        ((3000, 1000), "21:9"),
        ((640, 960), "2:3"),
        ((800, 1000), "4:5"),
    ],
)
def test_edit_keeps_the_input_shape(nbp: ModelEntry, shape: tuple[int, int], ratio: str) -> None:
    assert resolve_layout(nbp, input_shape=shape) == Layout(ratio, "1K", *SPEC_DIMS[(ratio, "1K")], ())
    # ... and resolution still scales it.
    assert resolve_layout(nbp, input_shape=shape, resolution="2K") == Layout(ratio, "2K", *SPEC_DIMS[(ratio, "2K")], ())


def test_explicit_aspect_ratio_overrides_the_input_shape(nbp: ModelEntry) -> None:
    layout = resolve_layout(nbp, aspect_ratio="16:9", input_shape=(600, 800))
    assert layout == Layout("16:9", "1K", 1365, 768, ())


def test_text_to_image_uses_the_model_default_ratio() -> None:
    model = make_model(
        default_aspect_ratio="16:9",
        sizes=table(("1:1", "1K", 1024, 1024), ("16:9", "1K", 1365, 768)),
    )
    assert resolve_layout(model) == Layout("16:9", "1K", 1365, 768, ())
    assert resolve_layout(model, input_shape=(700, 700)) == Layout("1:1", "1K", 1024, 1024, ())


# =============================================================================================
# Errors
# =============================================================================================


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "banana"}, "size"),
        ({"size": "0x100"}, "size"),
        ({"size": "100x0"}, "size"),
        ({"size": "10.5x20"}, "size"),
        ({"size": "-5x20"}, "size"),
        ({"size": "1024x"}, "size"),
        ({"size": "banana", "aspect_ratio": "1:1", "resolution": "1K"}, "size"),
        ({"aspect_ratio": "0:5"}, "aspect_ratio"),
        ({"aspect_ratio": "5:0"}, "aspect_ratio"),
        ({"aspect_ratio": "abc"}, "aspect_ratio"),
        ({"aspect_ratio": "16x9"}, "aspect_ratio"),
        ({"aspect_ratio": "-16:9"}, "aspect_ratio"),
        ({"resolution": "ultra"}, "resolution"),
        ({"resolution": "0K"}, "resolution"),
        ({"resolution": "-1K"}, "resolution"),
        ({"resolution": "0"}, "resolution"),
        ({"resolution": "K"}, "resolution"),
        ({"aspect_ratio": "abc", "input_shape": (600, 800)}, "aspect_ratio"),
        ({"size": "16:9", "resolution": "ultra"}, "resolution"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else v,
)
def test_invalid_values_raise_invalid_request_naming_the_param(nbp: ModelEntry, kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_layout(nbp, **kwargs)
    assert info.value.param == param
    assert info.value.status_code == 400


@pytest.mark.parametrize("size", ["0:5", "5:0"])
def test_invalid_size_ratio_names_size(nbp: ModelEntry, size: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_layout(nbp, size=size)
    assert info.value.param == "size"


OVERFLOWING = "1" + "0" * 400  # parses as float('inf')


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": f"{OVERFLOWING}x1"}, "size"),
        ({"aspect_ratio": f"{OVERFLOWING}:1"}, "aspect_ratio"),
        ({"aspect_ratio": f"1:{OVERFLOWING}"}, "aspect_ratio"),
        ({"resolution": f"{OVERFLOWING}K"}, "resolution"),
        ({"resolution": OVERFLOWING}, "resolution"),
    ],
    ids=["size", "ratio-w", "ratio-h", "k-tier", "mp-tier"],
)
def test_absurdly_large_numbers_raise_invalid_request(nbp: ModelEntry, kwargs: dict, param: str) -> None:
    try:
        layout = resolve_layout(nbp, **kwargs)
    except InvalidRequest as exc:
        assert exc.param == param
    else:  # clamping to the nearest supported value would also be acceptable
        assert (layout.aspect_ratio, layout.resolution) in SPEC_DIMS


# =============================================================================================
# Flexible models (pixel limits)
# =============================================================================================


def assert_within(width: int, height: int, limits: PixelLimits) -> None:
    assert width % limits.multiple_of == 0 and height % limits.multiple_of == 0, (width, height)
    assert max(width, height) <= limits.max_side, (width, height)
    assert width * height <= limits.max_pixels, (width, height)


def one_rounding_step(w_in: float, h_in: float, w_out: int, h_out: int, step: int) -> bool:
    """Is there one scale s with |w_out - s*w_in| <= step and |h_out - s*h_in| <= step?"""
    lo = max((w_out - step) / w_in, (h_out - step) / h_in)
    hi = min((w_out + step) / w_in, (h_out + step) / h_in)
    return lo <= hi + 1e-12


def test_flexible_huge_size_is_clamped_keeping_the_ratio() -> None:
    model = flex_model()
    layout = resolve_layout(model, size="20000x10000")
    assert_within(layout.width, layout.height, FLEX_LIMITS)
    assert layout.width * layout.height >= 0.85 * FLEX_LIMITS.max_pixels  # scaled to the limit, not far below
    assert one_rounding_step(20000, 10000, layout.width, layout.height, 64)
    assert abs(math.log(layout.width / layout.height / 2)) < 0.1
    assert layout.adjustments == (Adjustment("size", "20000x10000", f"{layout.width}x{layout.height}"),)
    f = Fraction(layout.width, layout.height)
    assert layout.aspect_ratio == f"{f.numerator}:{f.denominator}"


def test_flexible_long_side_is_clamped_to_max_side() -> None:
    layout = resolve_layout(flex_model(), size="8192x2048")
    assert (layout.width, layout.height) == (2048, 512)
    assert layout.aspect_ratio == "4:1"
    assert layout.adjustments == (Adjustment("size", "8192x2048", "2048x512"),)


def test_flexible_tiny_size_grows_to_min_side() -> None:
    layout = resolve_layout(flex_model(), size="10x20")
    assert (layout.width, layout.height) == (256, 512)
    assert layout.aspect_ratio == "1:2"
    assert layout.resolution == "0.5K"  # 0.13 MP is nearest the 0.5K tier (0.26 MP)
    assert layout.adjustments == (Adjustment("size", "10x20", "256x512"),)
    square = resolve_layout(flex_model(), size="1x1")
    assert (square.width, square.height) == (256, 256)


def test_flexible_size_within_limits_is_kept_exactly() -> None:
    layout = resolve_layout(flex_model(), size="1024x768")
    assert layout == Layout("4:3", "1K", 1024, 768, ())


def test_flexible_size_is_rounded_to_the_multiple_and_reported() -> None:
    layout = resolve_layout(flex_model(), size="1000x1000")
    assert (layout.width, layout.height) == (1024, 1024)
    assert layout.adjustments == (Adjustment("size", "1000x1000", "1024x1024"),)


def test_flexible_aspect_ratio_and_resolution() -> None:
    model = flex_model()
    layout = resolve_layout(model, aspect_ratio="16:9", resolution="1K")
    assert (layout.aspect_ratio, layout.resolution, layout.adjustments) == ("16:9", "1K", ())
    assert_within(layout.width, layout.height, FLEX_LIMITS)
    assert layout.width * layout.height == pytest.approx(1024 * 1024, rel=0.1)
    assert abs(math.log(layout.width / layout.height / (16 / 9))) < 0.1
    half = resolve_layout(model, aspect_ratio="3:4", resolution="0.5K")
    assert half.width * half.height == pytest.approx(512 * 512, rel=0.2)
    assert half.height > half.width
    # 2:1 is not in the flexible model's list: nearest is 16:9, and that is reported.
    two = resolve_layout(model, aspect_ratio="2:1")
    assert two.aspect_ratio == "16:9"
    assert two.adjustments == (Adjustment("aspect_ratio", "2:1", "16:9"),)
    # An edit keeps its input shape on a flexible model too.
    assert resolve_layout(model, input_shape=(600, 800)).aspect_ratio == "3:4"


@pytest.mark.parametrize(
    ("limits", "size"),
    [
        (PixelLimits(max_side=2048, max_pixels=2_000_000, min_side=256, multiple_of=64), (5, 5)),
        (PixelLimits(max_side=2048, max_pixels=2_000_000, min_side=256, multiple_of=64), (300, 100)),
        (PixelLimits(max_side=1000, max_pixels=2_000_000, min_side=64, multiple_of=64), (5000, 5000)),
        (PixelLimits(max_side=2048, max_pixels=1_000_000, min_side=64, multiple_of=8), (4000, 3000)),
    ],
)
def test_clamp_dimensions_respects_limits(limits: PixelLimits, size: tuple[int, int]) -> None:
    w, h = clamp_dimensions(*size, limits)
    assert_within(w, h, limits)
    assert min(w, h) >= limits.min_side
    assert one_rounding_step(*size, w, h, limits.multiple_of)


@pytest.mark.parametrize(
    ("limits", "size"),
    [
        (PixelLimits(max_side=2048, max_pixels=4_000_000, min_side=100, multiple_of=8), (10, 10)),  # -> 96x96
        (PixelLimits(max_side=2048, max_pixels=4_000_000, min_side=90, multiple_of=64), (10, 10)),  # -> 64x64
        (
            PixelLimits(max_side=2048, max_pixels=4_000_000, min_side=64, min_pixels=1_100_000, multiple_of=64),
            (10, 10),
        ),  # -> 1024x1024 = 1.05 MP
    ],
    ids=["min_side-100-m8", "min_side-90-m64", "min_pixels"],
)
def test_clamp_dimensions_never_goes_below_the_minimum(limits: PixelLimits, size: tuple[int, int]) -> None:
    w, h = clamp_dimensions(*size, limits)
    assert min(w, h) >= limits.min_side
    assert w * h >= limits.min_pixels


# =============================================================================================
# Properties (hypothesis)
# =============================================================================================

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NBP = _real_model()
FLEX = flex_model()
sides = st.integers(min_value=1, max_value=20000)


def nearest_ratios(target: float, ratios: list[str]) -> set[str]:
    best = min(log_dist(target, rval(r)) for r in ratios)
    return {r for r in ratios if log_dist(target, rval(r)) <= best + TIE}


@PROPS
@given(w=sides, h=sides)
def test_prop_size_wxh_picks_nearest_ratio_then_nearest_tier(w: int, h: int) -> None:
    layout = resolve_layout(NBP, size=f"{w}x{h}")
    assert SPEC_DIMS[(layout.aspect_ratio, layout.resolution)] == (layout.width, layout.height)
    # Shape: no supported ratio strictly closer by |ln|.
    assert layout.aspect_ratio in nearest_ratios(w / h, SPEC_RATIOS)
    # Scale: among the tiers of that ratio, nearest pixel count by log distance.
    dists = {t: log_dist(w * h, math.prod(SPEC_DIMS[(layout.aspect_ratio, t)])) for t in SPEC_TIERS}
    assert dists[layout.resolution] <= min(dists.values()) + TIE
    # Reported iff changed.
    if (layout.width, layout.height) == (w, h):
        assert layout.adjustments == ()
    else:
        assert layout.adjustments == (Adjustment("size", f"{w}x{h}", f"{layout.width}x{layout.height}"),)


@PROPS
@given(w=sides, h=sides, ratio=st.sampled_from(SPEC_RATIOS + ["7:1", "1:3"]), tier=st.sampled_from(SPEC_TIERS + ["3K"]))
def test_prop_size_wxh_ignores_ratio_and_resolution(w: int, h: int, ratio: str, tier: str) -> None:
    alone = resolve_layout(NBP, size=f"{w}x{h}")
    both = resolve_layout(NBP, size=f"{w}x{h}", aspect_ratio=ratio, resolution=tier, input_shape=(h, w))
    assert (both.aspect_ratio, both.resolution, both.width, both.height) == (
        alone.aspect_ratio,
        alone.resolution,
        alone.width,
        alone.height,
    )
    assert set(both.adjustments) == set(alone.adjustments) | {
        ignored("aspect_ratio", ratio),
        ignored("resolution", tier),
    }


ratio_parts = st.one_of(
    st.integers(min_value=1, max_value=5000).map(str),
    st.decimals(min_value="0.01", max_value="500", places=2, allow_nan=False, allow_infinity=False).map(str),
)


@PROPS
@given(a=ratio_parts, b=ratio_parts, tier=st.sampled_from([None, *SPEC_TIERS]))
def test_prop_aspect_ratio_picks_a_nearest_ratio(a: str, b: str, tier: str | None) -> None:
    wanted = float(a) / float(b)
    assume(wanted > 0)
    text = f"{a}:{b}"
    layout = resolve_layout(NBP, aspect_ratio=text, resolution=tier)
    assert layout.aspect_ratio in nearest_ratios(wanted, SPEC_RATIOS)
    assert layout.resolution == (tier or "1K")
    assert (layout.width, layout.height) == SPEC_DIMS[(layout.aspect_ratio, layout.resolution)]
    if abs(rval(layout.aspect_ratio) - wanted) <= TIE:
        assert layout.adjustments == ()
    else:
        assert layout.adjustments == (Adjustment("aspect_ratio", text, layout.aspect_ratio),)
    # size=W:H is the same as aspect_ratio, reported under `size`.
    via_size = resolve_layout(NBP, size=text, resolution=tier)
    assert (via_size.aspect_ratio, via_size.resolution, via_size.width, via_size.height) == (
        layout.aspect_ratio,
        layout.resolution,
        layout.width,
        layout.height,
    )
    assert via_size.adjustments == tuple(Adjustment("size", x.requested, x.applied) for x in layout.adjustments)


@PROPS
@given(
    x=st.floats(min_value=0.1, max_value=10, allow_nan=False), ratio=st.sampled_from(SPEC_RATIOS), lower=st.booleans()
)
def test_prop_k_resolution_picks_a_nearest_tier(x: float, ratio: str, lower: bool) -> None:
    number = f"{x:.3f}"
    text = number + ("k" if lower else "K")
    value = float(number)
    layout = resolve_layout(NBP, aspect_ratio=ratio, resolution=text)
    dists = {t: log_dist(value, n) for t, n in TIER_NUMBER.items()}
    best = min(dists.values())
    assert dists[layout.resolution] <= best + TIE
    # Ties to the larger: if the larger neighbour is equally near, it must have been chosen.
    tied = [t for t in SPEC_TIERS if dists[t] <= best + TIE]
    assert layout.resolution == max(tied, key=TIER_NUMBER.__getitem__)
    assert layout.aspect_ratio == ratio
    assert (layout.width, layout.height) == SPEC_DIMS[(ratio, layout.resolution)]
    if TIER_NUMBER[layout.resolution] == value:
        assert layout.adjustments == ()
    else:
        assert layout.adjustments == (Adjustment("resolution", text, layout.resolution),)


@PROPS
@given(w=sides, h=sides)
def test_prop_edit_keeps_nearest_input_shape(w: int, h: int) -> None:
    layout = resolve_layout(NBP, input_shape=(w, h))
    assert layout.aspect_ratio in nearest_ratios(w / h, SPEC_RATIOS)
    assert (layout.resolution, layout.adjustments) == ("1K", ())
    assert (layout.width, layout.height) == SPEC_DIMS[(layout.aspect_ratio, "1K")]


# Bound on |ln(ratio_out / ratio_in)| for the flexible model with W/H in [1/4, 4]:
# after scaling, both sides are >= min_side (256; and max_side/4 = 512 >= 256 so the
# max_side cap cannot push the short side below it). Rounding a side s >= min_side to the
# nearest multiple m moves it by <= m/2 onto a multiple >= min_side, a log change of at most
# ln(1 + (m/2)/min_side) = ln(9/8). The step-downs that undo an overshoot of max_pixels only
# happen where both sides are >= max_pixels/max_side ~ 976, each costing far less. Two sides:
_FLEX_BOUND = 2 * math.log(1 + (FLEX_LIMITS.multiple_of / 2) / FLEX_LIMITS.min_side)  # ~0.236


@st.composite
def moderate_shapes(draw) -> tuple[int, int]:
    w = draw(sides)
    h = draw(sides)
    assume(1 / 4 <= w / h <= 4)
    return w, h


@PROPS
@given(shape=moderate_shapes())
def test_prop_flexible_size_fits_limits_and_keeps_ratio(shape: tuple[int, int]) -> None:
    w, h = shape
    layout = resolve_layout(FLEX, size=f"{w}x{h}")
    assert_within(layout.width, layout.height, FLEX_LIMITS)
    assert min(layout.width, layout.height) >= FLEX_LIMITS.min_side
    assert abs(math.log((layout.width / layout.height) / (w / h))) <= _FLEX_BOUND
    assert one_rounding_step(w, h, layout.width, layout.height, FLEX_LIMITS.multiple_of)
    # Reported iff changed.
    assert (layout.adjustments == ()) == ((layout.width, layout.height) == (w, h))
    # Not shrunk for nothing: a request that already fits and is on the grid is kept.
    if w % 64 == 0 and h % 64 == 0 and min(w, h) >= 256 and max(w, h) <= 2048 and w * h <= 2_000_000:
        assert (layout.width, layout.height) == (w, h)


@PROPS
@given(w=sides, h=sides)
def test_prop_flexible_any_size_stays_within_maxima(w: int, h: int) -> None:
    layout = resolve_layout(FLEX, size=f"{w}x{h}")
    assert_within(layout.width, layout.height, FLEX_LIMITS)
    assert layout.width >= 64 and layout.height >= 64


@PROPS
@given(ratio=st.sampled_from(FLEX_RATIOS), tier=st.sampled_from(["0.5K", "1K"]))
def test_prop_flexible_ratio_and_tier_fit_limits(ratio: str, tier: str) -> None:
    layout = resolve_layout(FLEX, aspect_ratio=ratio, resolution=tier)
    assert (layout.aspect_ratio, layout.resolution, layout.adjustments) == (ratio, tier, ())
    assert_within(layout.width, layout.height, FLEX_LIMITS)
    assert abs(math.log((layout.width / layout.height) / rval(ratio))) <= _FLEX_BOUND
