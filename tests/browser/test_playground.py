"""The playground at / in a real browser, driven by its controls' accessible names (the names outside
acceptance tests use): a wrong key, a generation with a picked ratio and tier, a bad size, an edit with
an uploaded image. The upstream is the fake Gemini on loopback; every message the page must show is
read from the API's own answer to the same request, never written here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from playwright.sync_api import Page, expect

from imagegate.config import FileConfig
from imagegate.gateway import build_catalog

from ..conftest import API_KEY
from ..fakes.gemini import FakeGemini, parse_request
from .conftest import Browse

CATALOG = build_catalog(FileConfig())
FLAGSHIP = "gemini-3-pro-image-preview"


def api_error(browse: Browse, body: dict[str, Any], api_key: str = API_KEY) -> dict[str, Any]:
    """The API's error for this body: what the page has to show."""
    response = httpx.post(
        f"{browse.gateway.url}/v1/images/generations", json=body, headers={"authorization": f"Bearer {api_key}"}
    )
    assert 400 <= response.status_code < 500, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def catalog_size(aspect_ratio: str, resolution: str) -> str:
    model = CATALOG.get(FLAGSHIP)
    assert model is not None and model.sizes is not None
    (size,) = [s for s in model.sizes if s.aspect_ratio == aspect_ratio and s.resolution == resolution]
    return f"{size.width}x{size.height}"


def open_playground(browse: Browse, api_key: str = API_KEY) -> Page:
    page = browse.goto("/")
    page.get_by_label("API key").fill(api_key)
    page.get_by_label("API key").dispatch_event("change")  # the key's models are loaded on change
    page.get_by_label("Model").select_option(FLAGSHIP)
    return page


def expect_result(browse: Browse, page: Page) -> None:
    """A result image whose src is a result URL of this gateway or a data URI."""
    image = page.locator("#results img").first
    expect(image).to_be_visible(timeout=30_000)
    src = image.get_attribute("src") or ""
    assert src.startswith((f"{browse.gateway.url}/v1/results/", "data:image/")), src[:80]
    assert page.evaluate("img => img.complete && img.naturalWidth > 0", image.element_handle())


def test_a_wrong_key_shows_the_apis_message(browse: Browse, fake_gemini: FakeGemini) -> None:
    browse.expected_api_statuses.add(401)
    page = open_playground(browse, api_key="sk-wrong")
    page.get_by_label("Prompt").fill("A lighthouse on a cliff at dawn")
    page.get_by_role("button", name="Generate").click()
    message = api_error(browse, {"model": FLAGSHIP, "prompt": "x"}, api_key="sk-wrong")["message"]
    expect(page.get_by_role("alert").filter(has_text=message)).to_be_visible()
    assert not fake_gemini.requests  # nothing went upstream
    # The key is kept in this tab's session storage, and never put in a URL.
    assert page.evaluate("Object.values(sessionStorage)").count("sk-wrong") == 1
    assert not [url for url in browse.requests if "sk-wrong" in url]


def test_generate_with_a_ratio_and_tier_shows_the_image_and_its_size(browse: Browse, fake_gemini: FakeGemini) -> None:
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse on a cliff at dawn")
    page.get_by_label("Resolution").select_option("2K")
    page.get_by_label("Aspect ratio").select_option("16:9")
    size = catalog_size("16:9", "2K")
    expect(page.locator("#picked-size")).to_contain_text(size)  # the picker says what it gives
    page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    expect(page.get_by_text(size, exact=True).first).to_be_visible()
    expect(page.locator("#effective-size")).to_have_text(size)
    # The stream's partial images were shown while the image was made (the fake streams them).
    previews = page.locator("#previews img")
    assert previews.count() >= 1
    assert all(src.startswith("data:image/") for src in previews.evaluate_all("imgs => imgs.map(i => i.src)"))
    parsed = parse_request(fake_gemini.requests[-1].json)
    assert (parsed.aspect_ratio, parsed.image_size) == ("16:9", "2K")
    assert parsed.prompt == "A lighthouse on a cliff at dawn"


def test_a_bad_size_shows_the_apis_message_next_to_the_size_field(browse: Browse, fake_gemini: FakeGemini) -> None:
    browse.expected_api_statuses.add(400)
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse")
    page.get_by_label("Size").fill("banana")
    page.get_by_role("button", name="Generate").click()
    error = api_error(browse, {"model": FLAGSHIP, "prompt": "A lighthouse", "size": "banana"})
    assert error["param"] == "size"
    size_field = page.locator(".field").filter(has=page.locator("#size"))
    expect(size_field.get_by_role("alert")).to_have_text(error["message"])
    expect(page.locator("#size")).to_have_attribute("aria-invalid", "true")
    assert not fake_gemini.requests


def test_an_uploaded_image_makes_the_request_an_edit(browse: Browse, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    upload = tmp_path / "red.png"
    upload.write_bytes(buffer.getvalue())
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("Make it blue")
    page.get_by_label("Input images").set_input_files(str(upload))
    expect(page.locator("#input-list img")).to_have_count(1)
    page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    edits = [url for url in browse.requests if url.endswith("/v1/images/edits")]
    assert edits, browse.requests
    parsed = parse_request(fake_gemini.requests[-1].json)
    assert parsed.prompt.endswith("Make it blue") or "Make it blue" in parsed.prompt
    assert len(parsed.images) == 1
    sent = Image.open(io.BytesIO(parsed.images[0]))
    assert sent.size == (64, 48) and sent.convert("RGB").getpixel((10, 10)) == (200, 30, 30)


def test_each_control_name_finds_one_control(browse: Browse) -> None:
    """The accessible names outside acceptance tests use, each matching exactly one control (Playwright's
    get_by_label matches substrings: a "Size" label that mentions the resolution would match too)."""
    page = browse.goto("/")
    for name, role in [
        ("API key", "textbox"),
        ("Prompt", "textbox"),
        ("Aspect ratio", "combobox"),
        ("Resolution", "combobox"),
    ]:
        expect(page.get_by_label(name)).to_have_count(1)
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    expect(page.get_by_label("Input images")).to_have_count(1)
    expect(page.get_by_label("Input images")).to_have_attribute("type", "file")
    expect(page.get_by_role("button", name="Generate")).to_have_count(1)
    ratios = page.get_by_label("Aspect ratio").locator("option").evaluate_all("options => options.map(o => o.value)")
    model = CATALOG.get(FLAGSHIP)
    assert model is not None and model.sizes is not None
    assert "16:9" in ratios and set(ratios) <= {s.aspect_ratio for s in model.sizes}
