"""The model pages (/models, /models/{id}): real HTTP against the real app, HTML read with the
stdlib parser, every figure compared with the catalog data (never a hand-written list)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from imagegate.catalog import Handling, ModelEntry
from imagegate.config import FileConfig
from imagegate.gateway import build_catalog
from imagegate.normalize import resolve_layout
from imagegate.params import WirePlan, declared_fate
from imagegate.router import Router
from imagegate.server import pages

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini

CATALOG = build_catalog(FileConfig())  # the gateway's: built-in models and what the provider plugins bring
AVAILABILITY = {"required": "Required", "supported": "Supported", "not_available": "Not available"}


@dataclass
class Cell:
    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Table:
    attrs: dict[str, str]
    rows: list[tuple[dict[str, str], list[Cell]]] = field(default_factory=list)


class Page(HTMLParser):
    """Tables (rows of cells with their attributes), every src/href, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[Table] = []
        self.links: list[tuple[str, str]] = []
        self.chunks: list[str] = []
        self.pres: dict[str, str] = {}
        self._open: list[Table] = []
        self._cell: Cell | None = None
        self._pre: str | None = None
        self.feed(html)
        self.text = " ".join(" ".join(self.chunks).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in ("src", "href"):
            if name in a:
                self.links.append((tag, a[name]))
        if tag == "table":
            self._open.append(Table(a))
            self.tables.append(self._open[-1])
        elif tag == "tr" and self._open:
            self._open[-1].rows.append((a, []))
        elif tag in ("td", "th") and self._open:
            self._cell = Cell(tag, a)
            self._open[-1].rows[-1][1].append(self._cell)
        elif tag == "pre":
            self._pre = a.get("id", "")
            self.pres[self._pre] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._open:
            self._open.pop()
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "pre":
            self._pre = None

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)
        if self._cell is not None:
            self._cell.text = " ".join(f"{self._cell.text} {data}".split())
        if self._pre is not None:
            self.pres[self._pre] += data

    def tables_with(self, cls: str) -> list[Table]:
        return [t for t in self.tables if cls in t.attrs.get("class", "").split()]


def get_page(gateway: RunningGateway, path: str) -> tuple[httpx.Response, Page]:
    response = httpx.get(f"{gateway.url}{path}")
    return response, Page(response.text)


def table_sizes(model: ModelEntry) -> dict[str, list[str]]:
    """The sizes per tier from the catalog: the table, or what each ratio resolves to."""
    if model.sizes is not None:
        return {t: [f"{s.width}x{s.height}" for s in model.sizes if s.resolution == t] for t in model.resolution_tiers}
    return {
        t: [
            f"{(lay := resolve_layout(model, aspect_ratio=r, resolution=t)).width}x{lay.height}"
            for r in model.supported_ratios()
        ]
        for t in model.resolution_tiers
    }


@pytest.mark.parametrize("model", list(CATALOG), ids=[m.id for m in CATALOG])
def test_every_model_page_shows_the_catalog(gateway: RunningGateway, model: ModelEntry) -> None:
    response, page = get_page(gateway, pages.page_path(model.id))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # Every size of the table as WxH text, per tier.
    shown = {t.attrs["data-tier"]: [row[1][1].text for row in t.rows[1:]] for t in page.tables_with("sizes")}
    assert shown == table_sizes(model)
    for sizes in shown.values():
        for size in sizes:
            assert size in page.text
    # Each parameter row: Required / Supported / Not available per mode, as the catalog says.
    rows = {attrs["data-param"]: cells for t in page.tables_with("params") for attrs, cells in t.rows if attrs}
    assert set(rows) == set(model.parameters)
    for name, spec in model.parameters.items():
        modes = {c.attrs["data-mode"]: c.text for c in rows[name] if "data-mode" in c.attrs}
        assert modes == {"t2i": AVAILABILITY[spec.t2i], "edit": AVAILABILITY[spec.edit]}, name
    # The price per provider and tier is the binding's.
    prices = {t.attrs["data-provider"]: t for t in page.tables_with("prices")}
    assert list(prices) == list(model.providers)
    for provider_id, table in prices.items():
        price = model.binding_price(provider_id)
        got = {cells[0].text: float(cells[1].text) for attrs, cells in table.rows[1:]}
        assert got == {tier: price.for_resolution(tier) for tier in model.resolution_tiers}
    # The code examples name the model and a size of its table.
    size = pages.example_size(model)
    assert size in {s for sizes in table_sizes(model).values() for s in sizes}
    for kind in ("curl-generate", "python-generate", "node-generate"):
        assert f'"{model.id}"' in page.pres[f"example-{kind}"] and size in page.pres[f"example-{kind}"]
    assert all(model.id in code for code in page.pres.values())


def test_each_providers_handling_is_the_planners(gateway: RunningGateway) -> None:
    model = CATALOG.get("gemini-3-pro-image-preview")
    assert model is not None
    _, page = get_page(gateway, pages.page_path(model.id))
    tables = {t.attrs["data-provider"]: t for t in page.tables_with("handling")}
    assert list(tables) == list(model.providers)
    for provider_id, table in tables.items():
        plan = WirePlan.from_binding(model.providers[provider_id])
        shown = {attrs["data-param"]: attrs["data-handling"] for attrs, _ in table.rows if attrs}
        for name, spec in model.parameters.items():
            lacking = spec.t2i == spec.edit == "not_available" and name not in plan.handlings
            assert shown[name] == ("model_lacks" if lacking else declared_fate(plan, name).fate), (provider_id, name)
    seed_on = {attrs["data-param"]: cells[1].text for attrs, cells in tables["replicate"].rows if attrs}
    assert seed_on["seed"] == "not available"  # google/nano-banana-pro on Replicate has no seed
    gemini = {attrs["data-param"]: cells for attrs, cells in tables["gemini"].rows if attrs}
    assert (gemini["seed"][1].text, gemini["seed"][2].text) == ("renamed", "generationConfig.seed")
    assert "passthrough" in page.text and "emulated" in page.text and "converted" in page.text


def test_an_alias_page_shows_the_model(gateway: RunningGateway) -> None:
    response, page = get_page(gateway, "/models/nano-banana-pro")
    assert response.status_code == 200
    assert "is an alias of gemini-3-pro-image-preview" in page.text
    assert "Nano Banana Pro" in page.text and "6256x2681" in page.text
    assert '"gemini-3-pro-image-preview"' in page.pres["example-curl-generate"]


def test_unknown_model_is_a_404_page(gateway: RunningGateway) -> None:
    response, page = get_page(gateway, "/models/dall-e-9%3Cscript%3E")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Model not found" in page.text and "dall-e-9<script>" in page.text
    assert "<script>" not in response.text  # autoescaped


def test_the_index_lists_every_model(gateway: RunningGateway) -> None:
    response, page = get_page(gateway, "/models")
    assert response.status_code == 200
    (table,) = [t for t in page.tables if t.attrs.get("id") == "models"]
    listed = [attrs["data-model"] for attrs, _ in table.rows if attrs]
    assert listed == [m.id for m in CATALOG]
    hrefs = {href for tag, href in page.links if tag == "a"}
    assert {pages.page_path(m.id) for m in CATALOG} <= hrefs
    assert "nano-banana-pro" in page.text


def test_playground_false_turns_the_pages_off(gateway_factory: Any) -> None:
    gw = gateway_factory(playground=False)
    for path in ("/models", "/models/gemini-3-pro-image-preview", "/static/pages.css"):
        assert httpx.get(f"{gw.url}{path}").status_code == 404, path
    assert httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_assets_are_same_origin(gateway: RunningGateway) -> None:
    for path in ("/models", "/models/gemini-3-pro-image-preview", "/models/bytedance/seedream-4", "/models/x"):
        response, page = get_page(gateway, path)
        assert page.links, path
        for tag, url in page.links:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, (path, tag, url)  # no CDN, no other host
        assert "script-src 'none'" in response.headers["content-security-policy"]
        assert not [tag for tag, _ in page.links if tag == "script"]
        links = [url for tag, url in page.links if tag == "link"]
        assert links == ["/static/favicon.svg", "/static/pages.css"]  # the icon and the one stylesheet
    css = httpx.get(f"{gateway.url}/static/pages.css")
    assert css.status_code == 200 and "overflow-x: auto" in css.text  # wide tables scroll on a phone


def test_tables_have_header_cells_with_scope(gateway: RunningGateway) -> None:
    _, page = get_page(gateway, "/models/gemini-3-pro-image-preview")
    for table in page.tables:
        header = table.rows[0][1]
        assert header and all(c.tag == "th" and c.attrs.get("scope") == "col" for c in header)
        for _, cells in table.rows[1:]:
            assert cells[0].tag == "th" and cells[0].attrs.get("scope") == "row"


def test_the_python_example_runs_against_the_gateway(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    """The page's Python code, as a user copies it, makes an image on this gateway."""
    _, page = get_page(gateway, "/models/gemini-3-pro-image-preview")
    code = page.pres["example-python-generate"]
    assert gateway.url in code
    env = {**os.environ, "IMAGEGATE_API_KEY": API_KEY}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"{gateway.url}/v1/results/")
    assert len(fake_gemini.requests) == 1


def test_the_python_edit_example_runs(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """The edit example follows the generation one (its `client`), reading input.png."""
    Image.new("RGB", (64, 48), "red").save(tmp_path / "input.png")
    _, page = get_page(gateway, "/models/gemini-3-pro-image-preview")
    code = page.pres["example-python-generate"] + page.pres["example-python-edit"]
    env = {**os.environ, "IMAGEGATE_API_KEY": API_KEY}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    urls = done.stdout.split()
    assert len(urls) == 2 and all(u.startswith(f"{gateway.url}/v1/results/") for u in urls)
    assert len(fake_gemini.requests) == 2


def needs(program: str) -> None:
    """.ci/run installs curl and nodejs from Debian: a missing one fails with the command."""
    if shutil.which(program) is None:
        pytest.fail(f"{program} is missing: apt-get install -y curl nodejs")


@pytest.mark.parametrize("kind", ["generate", "edit"])
def test_the_curl_examples_run(gateway: RunningGateway, fake_gemini: FakeGemini, tmp_path: Path, kind: str) -> None:
    needs("curl")
    Image.new("RGB", (64, 48), "blue").save(tmp_path / "input.png")
    _, page = get_page(gateway, "/models/gemini-3-pro-image-preview")
    env = {**os.environ, "IMAGEGATE_API_KEY": API_KEY}
    code = page.pres[f"example-curl-{kind}"]
    done = subprocess.run(
        ["bash", "-c", code + " --silent --fail"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["data"][0]["url"].startswith(f"{gateway.url}/v1/results/")
    assert answer["effective"]["model"] == "gemini-3-pro-image-preview"


def test_the_node_examples_are_valid_javascript(gateway: RunningGateway, tmp_path: Path) -> None:
    """Syntax only: the `openai` npm package is not installed here (node --check loads no imports)."""
    needs("node")
    _, page = get_page(gateway, "/models/gemini-3-pro-image-preview")
    script = tmp_path / "example.mjs"
    script.write_text(page.pres["example-node-generate"] + page.pres["example-node-edit"])
    done = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'model: "gemini-3-pro-image-preview"' in script.read_text()


def test_the_operators_default_response_format_is_shown(gateway_factory: Any) -> None:
    gw = gateway_factory(default_response_format="url")
    _, page = get_page(gw, "/models/gemini-3-pro-image-preview")
    rows = {attrs["data-param"]: cells for t in page.tables_with("params") for attrs, cells in t.rows if attrs}
    assert 'Default: "url"' in rows["response_format"][2].text


def test_view_data_is_built_without_http() -> None:
    router = Router(CATALOG, {})
    model = CATALOG.get("gpt-image-1")
    assert model is not None
    view = pages.model_page(model, router, "gpt-image-1", "https://gw.example")
    (openai,) = view["providers"]
    assert openai["configured"] is False
    quality = {q["quality"]: {s["size"]: s["text"] for s in q["sizes"]} for q in openai["by_quality_size"]}
    expected = model.binding_price("openai").by_quality_size
    assert {q: {s: float(v) for s, v in t.items()} for q, t in quality.items()} == expected
    assert view["examples"][1]["code"].startswith("import os")
    assert 'base_url="https://gw.example/v1"' in view["examples"][1]["code"]
    assert pages.money(0.24) == "0.24" and pages.money(0.0011) == "0.0011" and pages.money(0) == "0"


def test_every_handling_has_its_words() -> None:
    """A handling added to the catalog's vocabulary must be explained on the pages."""
    assert set(get_args(Handling)) | {"gateway", "model_lacks"} == set(pages.HANDLING_TEXT)
