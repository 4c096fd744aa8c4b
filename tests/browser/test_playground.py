"""The playground at / in a real browser, driven by its controls' accessible names (the names outside
acceptance tests use): a wrong key, a generation with a picked ratio and tier, a bad size, an edit with
an uploaded image. The upstream is the fake Gemini on loopback; every message the page must show is
read from the API's own answer to the same request, never written here."""

from __future__ import annotations

import email
import email.policy
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
    # Visible comes before loaded: wait (within the same 30 s) for the bytes to have arrived and decoded.
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=30_000)


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


def test_generate_works_against_an_upstream_that_does_not_stream(browse: Browse, fake_gemini: FakeGemini) -> None:
    """The page always asks for a stream; a Gemini-compatible upstream with only generateContent
    still gives the image (the gateway makes the plain call), just with no previews."""
    fake_gemini.stream_method = "missing"
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse")
    page.get_by_label("Aspect ratio").select_option("16:9")
    page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    expect(page.locator("#effective-size")).to_have_text(catalog_size("16:9", "1K"))
    assert [r.path.rpartition(":")[2] for r in fake_gemini.requests] == ["streamGenerateContent", "generateContent"]


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


def png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def sent_images(fake_gemini: FakeGemini) -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    """The upstream's input images of the last call: each one's size and first pixel."""
    images = [
        Image.open(io.BytesIO(data)).convert("RGB") for data in parse_request(fake_gemini.requests[-1].json).images
    ]
    return [(image.size, image.getpixel((0, 0))) for image in images]


def test_uploaded_images_make_the_request_an_edit(browse: Browse, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    red = png(tmp_path / "red.png", (64, 48), (200, 30, 30))
    green = png(tmp_path / "green.png", (32, 32), (30, 200, 30))
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("Make it blue")
    page.get_by_label("Input images").set_input_files([str(red), str(green)])  # several at once
    expect(page.locator("#input-list img")).to_have_count(2)
    page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    edits = [url for url in browse.requests if url.endswith("/v1/images/edits")]
    assert edits, browse.requests
    assert "Make it blue" in parse_request(fake_gemini.requests[-1].json).prompt
    assert sent_images(fake_gemini) == [((64, 48), (200, 30, 30)), ((32, 32), (30, 200, 30))]


def test_a_dropped_image_and_a_result_used_as_input(browse: Browse, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """Drag and drop onto the input images, then "use as input": the result goes into the next edit."""
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A red square")
    data = list(png(tmp_path / "red.png", (40, 40), (200, 30, 30)).read_bytes())
    dropped = page.evaluate_handle(
        "data => { const t = new DataTransfer();"
        " t.items.add(new File([new Uint8Array(data)], 'red.png', {type: 'image/png'})); return t; }",
        data,
    )
    page.locator("#drop-zone").dispatch_event("drop", {"dataTransfer": dropped})
    expect(page.locator("#input-list img")).to_have_count(1)
    page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    assert sent_images(fake_gemini) == [((40, 40), (200, 30, 30))]
    result_size = tuple(
        page.evaluate(
            "() => { const i = document.querySelector('#results img'); return [i.naturalWidth, i.naturalHeight]; }"
        )
    )
    page.get_by_role("button", name="Use result 1 as input").click()
    expect(page.locator("#input-list img")).to_have_count(2)
    first_src = page.locator("#results img").first.get_attribute("src")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(  # the second result replaced the first
        "old => { const i = document.querySelector('#results img'); return i && i.src !== old && i.complete; }",
        arg=first_src,
    )
    assert len(fake_gemini.requests) == 2
    sizes = [size for size, _ in sent_images(fake_gemini)]
    assert sizes == [(40, 40), result_size]


def test_the_form_works_from_the_keyboard(browse: Browse, fake_gemini: FakeGemini) -> None:
    page = open_playground(browse)
    page.get_by_label("Prompt").focus()
    page.keyboard.type("A lighthouse")
    order = []
    for _ in range(60):  # Tab through the controls until Generate has the focus
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
        if order[-1] == "generate":
            break
    assert order[-1] == "generate", order
    for control in ("aspect-ratio", "resolution", "size", "images"):
        assert control in order
    page.keyboard.press("Enter")
    expect_result(browse, page)
    assert parse_request(fake_gemini.requests[-1].json).prompt == "A lighthouse"


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


def multipart_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    """A multipart/form-data body's parts by field name (the stdlib's MIME parser reads the format)."""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.default
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def test_a_painted_mask_is_sent_with_the_edit(browse: Browse, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A hole in the middle")
    page.get_by_label("Input images").set_input_files(str(png(tmp_path / "red.png", (64, 48), (200, 30, 30))))
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 64")
    page.locator("#mask-canvas").scroll_into_view_if_needed()  # the mouse works in the viewport's coordinates
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)
    page.mouse.down()
    page.mouse.move(centre[0] + 2, centre[1] + 1)
    page.mouse.up()
    expect(page.locator("#mask-canvas")).to_have_attribute("data-painted", "true")
    with page.expect_request("**/v1/images/edits") as caught:
        page.get_by_role("button", name="Generate").click()
    expect_result(browse, page)
    request = caught.value
    parts = multipart_parts(request.headers["content-type"], request.post_data_buffer or b"")
    assert "mask" in parts, list(parts)
    mask = Image.open(io.BytesIO(parts["mask"]))
    assert mask.format == "PNG" and mask.size == (64, 48)  # the first image's size
    alpha = mask.convert("RGBA").getchannel("A")
    assert alpha.getpixel((32, 24)) == 0  # painted: may change
    assert alpha.getpixel((0, 0)) == 255  # not painted: kept
