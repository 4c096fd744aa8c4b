"""The pages' icon and the /docs page's text, over real HTTP: /favicon.ico answers with the packaged
SVG every page links, off with the pages; /docs shows the descriptions' `code` as <code>
(escaped first, so no description adds markup), has a table of contents of every operation, and
folds a long request body in <details>."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from imagegate.server.openapi import OPEN_SCHEMA_FIELDS, inline_html, prose_html

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini

ICON = "/static/favicon.svg"
SVG_NS = "{http://www.w3.org/2000/svg}svg"


class Page(HTMLParser):
    """The text a reader sees (outside tags), the icon links, ids and fragment links."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.icons: list[str] = []
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "link" and a.get("rel") == "icon":
            self.icons.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_favicon_ico_is_the_packaged_svg(gateway: RunningGateway) -> None:
    icon = httpx.get(f"{gateway.url}/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(icon.content).tag == SVG_NS  # a well-formed SVG document
    assert icon.content == httpx.get(f"{gateway.url}{ICON}").content  # the icon the pages link


@pytest.mark.parametrize("path", ["/", "/models", "/models/gemini-3-pro-image-preview", "/models/nope", "/docs"])
def test_every_page_links_the_icon(gateway: RunningGateway, path: str) -> None:
    response = httpx.get(f"{gateway.url}{path}")
    assert response.status_code in (200, 404)
    assert Page(response.text).icons == [ICON], path


def test_playground_false_turns_the_icon_off_and_keeps_the_document(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, playground=False)
    for path in ("/favicon.ico", ICON):
        response = httpx.get(f"{gw.url}{path}")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gw.url}/openapi.json").json()["openapi"].startswith("3.1")


def test_inline_code_is_escaped_first_then_marked_up() -> None:
    assert inline_html("send `stream: true` now") == "send <code>stream: true</code> now"
    # Markup in a description stays text, inside code spans too.
    assert inline_html("a `<b>x</b>` <script>y</script>") == (
        "a <code>&lt;b&gt;x&lt;/b&gt;</code> &lt;script&gt;y&lt;/script&gt;"
    )
    assert inline_html("an odd ` backtick") == "an odd ` backtick"  # no pair, no code
    assert prose_html("One `a`.\n\nTwo.\n") == "<p>One <code>a</code>.</p><p>Two.</p>"


def test_docs_show_code_not_backticks(gateway: RunningGateway) -> None:
    html = httpx.get(f"{gateway.url}/docs").text
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    described = [
        p.get("description", "")
        for item in document["paths"].values()
        for op in item.values()
        for p in op.get("parameters", [])
    ]
    spans = {span for text in described for span in re.findall(r"`([^`]+)`", text)}
    assert spans, "no description with `code` left to show"  # the test would check nothing
    for span in spans:
        assert f"<code>{span}</code>" in html, span
    assert "`" not in "".join(Page(html).text)


def test_docs_contents_link_every_operation(gateway: RunningGateway) -> None:
    html = httpx.get(f"{gateway.url}/docs").text
    page = Page(html)
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    operations = [f"{method}-{path}" for path, item in document["paths"].items() for method in item]
    fragments = [href.removeprefix("/docs#") for href in page.hrefs if href.startswith("/docs#")]
    assert sorted(httpx.URL(f"/docs#{f}").fragment for f in fragments) == sorted(operations)  # each once
    assert set(operations) <= page.ids  # each link has its section


def test_docs_fold_a_long_body(gateway: RunningGateway) -> None:
    html = httpx.get(f"{gateway.url}/docs").text
    generations = html[html.index('id="post-/v1/images/generations"') :]
    generations = generations[: generations.index("</section>")]
    assert '<details class="schema"><summary><h4>Body (application/json)' in generations
    assert "<details open" not in generations
    fields = len(
        httpx.get(f"{gateway.url}/openapi.json").json()["components"]["schemas"]["GenerationRequest"]["properties"]
    )
    assert fields > OPEN_SCHEMA_FIELDS
