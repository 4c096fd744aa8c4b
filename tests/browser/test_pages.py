"""The model pages, /models and /docs in a real browser: what a person sees, compared with the catalog
data (never a hand-written list), with every request on the gateway's origin and no console error
(the `browse` fixture checks those two for every test)."""

from __future__ import annotations

import pytest
from PIL import Image
from playwright.sync_api import expect

from imagegate.catalog import ModelEntry
from imagegate.config import FileConfig
from imagegate.gateway import build_catalog
from imagegate.server import pages

from .conftest import Browse, origin

CATALOG = build_catalog(FileConfig())  # the gateway's: built-in models and what the provider plugins bring
FLAGSHIP = "gemini-3-pro-image-preview"
AVAILABILITY = {"required": "Required", "supported": "Supported", "not_available": "Not available"}


def flagship() -> ModelEntry:
    model = CATALOG.get(FLAGSHIP)
    assert model is not None and model.sizes is not None
    return model


def test_model_page_shows_every_size_of_the_table(browse: Browse) -> None:
    model = flagship()
    page = browse.goto(pages.page_path(FLAGSHIP))
    expect(page.get_by_role("heading", level=1)).to_have_text(model.name)
    for tier in model.resolution_tiers:
        table = page.locator(f'table.sizes[data-tier="{tier}"]')
        expected = [f"{s.width}x{s.height}" for s in model.sizes if s.resolution == tier]
        assert expected, tier
        # In the table's order, and each one visible on the page as WxH text.
        assert table.locator("tbody tr td:nth-child(2) code").all_inner_texts() == expected
        for size in expected:
            expect(table.get_by_text(size, exact=True)).to_be_visible()


def test_model_page_parameter_rows_say_each_modes_availability(browse: Browse) -> None:
    model = flagship()
    page = browse.goto(pages.page_path(FLAGSHIP))
    rows = page.locator("table.params tbody tr[data-param]")
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.param)")) == sorted(model.parameters)
    for name, spec in model.parameters.items():
        row = page.locator(f'table.params tr[data-param="{name}"]')
        expect(row.get_by_role("rowheader")).to_contain_text(name)
        expect(row.locator('td[data-mode="t2i"]')).to_have_text(AVAILABILITY[spec.t2i])
        expect(row.locator('td[data-mode="edit"]')).to_have_text(AVAILABILITY[spec.edit])


def test_models_index_links_to_every_model_page(browse: Browse) -> None:
    page = browse.goto("/models")
    table = page.locator("table#models")
    listed = table.locator("tbody tr[data-model]").evaluate_all("rows => rows.map(r => r.dataset.model)")
    assert listed == [m.id for m in CATALOG]
    hrefs = {m.id: table.locator(f'tr[data-model="{m.id}"] a').get_attribute("href") for m in CATALOG}
    for model in CATALOG:
        link = table.locator(f'tr[data-model="{model.id}"]').get_by_role("link", name=model.name)
        expect(link).to_be_visible()
        assert hrefs[model.id] == pages.page_path(model.id)
    # The links work: following one (a click, as a person would) opens that model's page.
    page.locator(f'tr[data-model="{FLAGSHIP}"]').get_by_role("link").click()
    page.wait_for_load_state("load")
    assert page.url == browse.gateway.url + pages.page_path(FLAGSHIP)
    expect(page.locator("#model-id")).to_have_text(FLAGSHIP)
    for model in CATALOG:  # and every other one answers with its page
        page.goto(browse.gateway.url + pages.page_path(model.id), wait_until="load")
        expect(page.locator("#model-id")).to_have_text(model.id)


def test_docs_page_renders_with_every_asset_from_the_gateway(browse: Browse) -> None:
    page = browse.goto("/docs")
    expect(page.get_by_role("heading", level=1)).to_contain_text("API reference")
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/models"):
        expect(page.get_by_role("heading", name=path).first).to_be_visible()
    expect(page.get_by_role("link", name="/openapi.json")).to_have_attribute("href", "/openapi.json")
    # Its stylesheet was asked for and loaded, from this origin, and it styles the page.
    assets = {url: status for url, status in browse.responses.items() if url != browse.gateway.url + "/docs"}
    assert assets, "the docs page loaded no asset"
    assert all(origin(url) == browse.origin and status == 200 for url, status in assets.items()), assets
    assert not browse.failed
    assert page.evaluate("document.styleSheets.length") >= 1
    assert page.evaluate("document.styleSheets[0].cssRules.length") > 0


@pytest.mark.parametrize("path", ["/", "/models", f"/models/{FLAGSHIP}"], ids=["playground", "models", "model-page"])
def test_pages_load_every_asset(browse: Browse, path: str) -> None:
    page = browse.goto(path)
    assert page.evaluate("document.styleSheets[0].cssRules.length") > 0
    assert all(status == 200 for status in browse.responses.values()), browse.responses
    assert not browse.failed


def test_the_guards_catch_foreign_requests_and_console_errors(browse: Browse) -> None:
    """The fixture's own checks: an off-origin request is recorded (and aborted, so it never leaves),
    a console error is recorded. Cleared at the end so that this test itself passes."""
    browse.page.goto("about:blank")  # no CSP here (the gateway's pages would block the script themselves)
    browse.page.set_content('<img src="http://192.0.2.1/x.png"><script>console.error("boom")</script>')
    browse.page.wait_for_load_state("load")
    assert browse.foreign == ["http://192.0.2.1/x.png"]
    assert any("boom" in error for error in browse.console_errors)
    assert [failure for failure in browse.failed if failure.startswith("http://192.0.2.1/x.png")]
    browse.foreign.clear()
    browse.console_errors.clear()


@pytest.mark.parametrize(
    "path", ["/", "/models", f"/models/{FLAGSHIP}", "/docs"], ids=["playground", "models", "model-page", "docs"]
)
def test_pages_fit_a_phones_width(browse: Browse, path: str) -> None:
    """At 390 CSS pixels (a phone held upright) the page itself never scrolls sideways: wide tables
    scroll inside their own box."""
    browse.page.set_viewport_size({"width": 390, "height": 844})
    page = browse.goto(path)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_each_page_visited_is_saved_as_a_screenshot(browse: Browse) -> None:
    """The earlier pages of a test are saved as <test>.<n>.png when it moves on (the last one as
    <test>.png at its end): full-page PNGs, as tall as the page."""
    browse.goto("/models")
    browse.goto("/docs")
    first = browse.shots.with_name(f"{browse.shots.stem}.1.png")
    with Image.open(first) as shot:
        assert shot.format == "PNG" and shot.width == 1280
        assert shot.height > 900  # the whole page, not the viewport: /models is taller than 900 px


@pytest.mark.parametrize("path", ["/models", f"/models/{FLAGSHIP}"], ids=["models", "model-page"])
def test_description_columns_stay_readable_on_a_phone(browse: Browse, path: str) -> None:
    """At 390 px a table too wide for the screen scrolls in its own box; its description cells keep a
    readable width (at least 200 px) rather than one word a line, and the index's descriptions are not bold."""
    browse.page.set_viewport_size({"width": 390, "height": 844})
    page = browse.goto(path)
    cells = "table.params td:nth-child(3), table.handling td:nth-child(4), #models th[scope=row]"
    widths = page.eval_on_selector_all(cells, "cells => cells.map(c => c.getBoundingClientRect().width)")
    assert widths and min(widths) >= 200, widths
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the page itself still fits
    boxes = page.eval_on_selector_all(".scroll", "boxes => boxes.map(b => b.scrollWidth > b.clientWidth)")
    assert any(boxes)  # some tables do scroll, inside their box
    weights = page.eval_on_selector_all("#models th .muted", "els => els.map(e => getComputedStyle(e).fontWeight)")
    assert all(int(w) < 600 for w in weights), weights


def test_docs_contents_lead_to_each_operation_and_code_shows_as_code(browse: Browse) -> None:
    page = browse.goto("/docs")
    contents = page.get_by_role("navigation", name="Operations")
    expect(contents).to_be_visible()
    # Following an entry (a click) brings its operation's section into view, on the same page.
    contents.get_by_role("link", name="Edit images").click()
    section = page.locator('section[id="post-/v1/images/edits"]')
    expect(section).to_be_in_viewport()
    assert page.url == f"{browse.gateway.url}/docs#post-/v1/images/edits"
    # The descriptions' `code` is shown as code, never as backticks.
    assert "`" not in page.locator("main").inner_text()
    expect(page.locator("td code", has_text="respond-async").first).to_be_visible()
    # A long request body is folded: its fields show once it is opened.
    body = section.locator("details.schema").first
    field = body.locator("td code", has_text="prompt").first
    expect(field).to_be_hidden()
    body.locator("summary").click()
    expect(field).to_be_visible()


@pytest.mark.parametrize("path", ["/", "/models", "/docs"], ids=["playground", "models", "docs"])
def test_the_pages_icon_loads(browse: Browse, path: str) -> None:
    """The icon each page links loads in the page as an image (the SVG, 32x32). /favicon.ico itself is
    checked over HTTP (tests/server/test_favicon_and_docs.py): Playwright's request interception, which
    the `browse` fixture uses, leaves a page's /favicon.ico requests unanswered."""
    page = browse.goto(path)
    icon = page.locator("link[rel=icon]").evaluate("link => link.href")
    assert origin(icon) == browse.origin
    size = page.evaluate(
        """url => new Promise(done => {
          const img = new Image();
          img.onload = () => done([img.naturalWidth, img.naturalHeight]);
          img.onerror = () => done(null);
          img.src = url;
        })""",
        icon,
    )
    assert size == [32, 32]
    assert browse.responses[icon] == 200
