"""What the playground shows, measured in a real browser (boxes, canvas pixels, what is hidden), for the
faults its screenshots showed: streamed previews drawn as 8 px squares, a blurred mask canvas, mask
controls on a text-to-image form, two-column rows out of line when a label wraps, and the provider
options' toggle, which must appear only for a model that has such options.

The gateway here also serves one model from a config file whose parameters are all common ones (every
built-in model has a provider-specific option), routed to the same fake Gemini.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini, Streamed
from .conftest import Browse
from .test_playground import FLAGSHIP, expect_result, multipart_parts, open_playground, png

PLAIN_MODEL = "plain-test-model"  # a model with no provider-specific parameter
PLAIN_MODEL_CONFIG = f'''
[[models]]
id = "{PLAIN_MODEL}"
name = "Plain test model"
modes = ["t2i"]
resolution_kind = "k"
resolution_tiers = ["1K"]
default_resolution = "1K"
aspect_ratios = ["1:1"]
sizes = [{{ aspect_ratio = "1:1", resolution = "1K", width = 1024, height = 1024 }}]
price = {{ per_image = 0.01 }}
[models.parameters.prompt]
type = "string"
description = "What to draw."
t2i = "required"
edit = "not_available"
[models.providers.gemini]
upstream_model = "gemini-3-pro-image-preview"
'''


@pytest.fixture
def gateway(gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path) -> RunningGateway:
    """The usual gateway on the fake Gemini, plus PLAIN_MODEL from a config file (overrides conftest's)."""
    config = tmp_path / "imagegate.toml"
    config.write_text(PLAIN_MODEL_CONFIG)
    result: RunningGateway = gateway_factory(
        config=config, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url
    )
    return result


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, selector
    return found


def test_streamed_previews_take_the_final_images_box(browse: Browse, fake_gemini: FakeGemini) -> None:
    """The fake's thought images are 8x8: shown in the final image's box, one preview replaced in place,
    with a caption, and the final image takes its place."""
    gate = threading.Event()  # the fake holds the answer back until it is set: the previews can be measured
    fake_gemini.enqueue(Streamed(thought_images=2, gate=gate))
    try:
        page = open_playground(browse)
        page.get_by_label("Prompt").fill("A lighthouse")
        page.get_by_label("Resolution").select_option("1K")
        page.get_by_label("Aspect ratio").select_option("16:9")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#previews figcaption")).to_contain_text("Preview 2 of 2")
        expect(page.locator("#previews img")).to_have_count(1)  # replaced in place, not added
        page.wait_for_function("() => { const i = document.getElementById('preview-image'); return i.complete; }")
        assert page.evaluate("document.getElementById('preview-image').naturalWidth") == 8  # the fake's partial
        preview = box(page, "#previews img")
        browse.screenshot(f"{browse.shots.stem}.preview")  # what a person sees while the image is made
    finally:
        gate.set()
    expect_result(browse, page)
    expect(page.locator("#previews")).to_be_hidden()  # the final image took its place
    final = box(page, "#results img")
    assert final["width"] > 100  # a real box, not a thumbnail
    for side in ("width", "height", "x", "y"):
        assert abs(preview[side] - final[side]) <= 2, (side, preview, final)


def mask_alpha(page: Page, x: int, y: int) -> int:
    """The mask canvas's own alpha at its pixel (x, y)."""
    alpha: int = page.evaluate(
        "([x, y]) => document.getElementById('mask-canvas').getContext('2d').getImageData(x, y, 1, 1).data[3]", [x, y]
    )
    return alpha


def test_the_mask_canvas_has_the_images_pixels_and_paint_lands_under_the_pointer(
    browse: Browse, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    """A 2048x1536 image: the canvas is 1024x768 (its long side capped, the ratio kept), shown in the
    image's box; a click a quarter across and a third down paints there; the mask sent is the image's size."""
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A hole")
    page.get_by_label("Input images").set_input_files(str(png(tmp_path / "big.png", (2048, 1536), (200, 30, 30))))
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 1024")
    size = page.evaluate("() => { const c = document.getElementById('mask-canvas'); return [c.width, c.height]; }")
    assert size == [1024, 768]
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    canvas, image = box(page, "#mask-canvas"), box(page, "#mask-base")
    assert canvas == image  # drawn over the image, at its displayed size
    page.mouse.click(canvas["x"] + canvas["width"] / 4, canvas["y"] + canvas["height"] / 3)
    expect(page.locator("#mask-canvas")).to_have_attribute("data-painted", "true")
    assert mask_alpha(page, 256, 256) > 0  # under the pointer, in the canvas's own pixels
    assert mask_alpha(page, 768, 512) == 0  # the opposite quarter: untouched
    with page.expect_request("**/v1/images/edits") as caught:
        page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    parts = multipart_parts(caught.value.headers["content-type"], caught.value.post_data_buffer or b"")
    mask = Image.open(io.BytesIO(parts["mask"]))
    assert mask.size == (2048, 1536)  # the first image's size, which the API needs
    alpha = mask.convert("RGBA").getchannel("A")
    assert alpha.getpixel((512, 512)) == 0 and alpha.getpixel((1536, 1024)) == 255
    assert sum(alpha.histogram()[1:255]) == 0  # scaled up without half-transparent edges


def test_a_small_images_mask_canvas_has_its_size(browse: Browse, tmp_path: Path) -> None:
    page = open_playground(browse)
    page.get_by_label("Input images").set_input_files(str(png(tmp_path / "small.png", (64, 48), (200, 30, 30))))
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 64")
    assert page.evaluate("document.getElementById('mask-canvas').height") == 48
    # Shown larger than its pixels: crisp pixels (the mask's own), not a blur.
    expect(page.locator(".mask-stack")).to_have_class("mask-stack upscaled")
    assert page.evaluate("getComputedStyle(document.getElementById('mask-canvas')).imageRendering") == "pixelated"


def test_the_mask_block_is_shown_only_with_an_input_image(browse: Browse, tmp_path: Path) -> None:
    page = open_playground(browse)
    expect(page.get_by_role("button", name="Clear the mask")).to_be_hidden()
    expect(page.locator("#mask-panel")).to_be_hidden()
    page.get_by_label("Input images").set_input_files(str(png(tmp_path / "red.png", (40, 40), (200, 30, 30))))
    expect(page.get_by_role("button", name="Clear the mask")).to_be_visible()
    page.get_by_role("button", name="Remove red.png").click()
    expect(page.locator("#input-list img")).to_have_count(0)
    expect(page.locator("#mask-panel")).to_be_hidden()
    expect(page.get_by_text("paint where the first image should change")).to_be_hidden()


@pytest.mark.parametrize("width", [390, 1280])
def test_row_fields_line_up_when_a_label_wraps(browse: Browse, width: int) -> None:
    """Two-column rows ("Number of images (n)" / "Seed", ...): their inputs' bottoms level, whatever
    wraps; the "Gives WxH" line right under the pickers it describes."""
    browse.page.set_viewport_size({"width": width, "height": 900})
    page = browse.goto("/")
    bottoms = page.eval_on_selector_all(
        ".row",
        "rows => rows.map(r => [...r.querySelectorAll('.field > input, .field > select')]"
        ".map(c => Math.round(c.getBoundingClientRect().bottom)))",
    )
    assert len(bottoms) >= 3
    for row in bottoms:
        assert len(row) == 2 and abs(row[0] - row[1]) <= 1, bottoms
    gap = page.evaluate(
        "() => document.getElementById('picked-size').closest('p').getBoundingClientRect().top"
        " - document.getElementById('resolution').getBoundingClientRect().bottom"
    )
    assert 0 <= gap <= 12, gap


def test_provider_options_toggle_only_for_models_that_have_them(browse: Browse) -> None:
    page = open_playground(browse)  # the flagship: Gemini's and fal's own options
    toggle = page.get_by_role("button", name="Show this model's own options")
    expect(toggle).to_be_visible()
    page.get_by_label("Model").select_option(PLAIN_MODEL)
    expect(page.get_by_label("Resolution").locator("option")).to_have_count(1)  # its card was read: one tier
    expect(toggle).to_be_hidden()
    page.get_by_label("Model").select_option(FLAGSHIP)
    expect(toggle).to_be_visible()
    toggle.click()
    expect(page.get_by_label("safety_tolerance", exact=False).first).to_be_visible()


def test_effective_settings_keep_name_and_value_on_one_line_on_a_phone(browse: Browse) -> None:
    browse.page.set_viewport_size({"width": 390, "height": 900})
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse")
    page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    rows = page.eval_on_selector_all(
        "#effective dt",
        "dts => dts.map(dt => [dt.getBoundingClientRect().top, dt.nextElementSibling.getBoundingClientRect().top])",
    )
    assert len(rows) >= 5
    assert all(abs(name - value) <= 2 for name, value in rows), rows
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
