"""The playground at /: real HTTP against the real app, the HTML read with the stdlib parser. The
controls' accessible names are a contract (outside browser tests find them by label), the pickers
are filled from the catalog, every asset is this origin's and the script is valid JavaScript.
The requests the script makes (a streamed generation, a multipart edit with `image[]` parts) are
sent here as it sends them, and their answers carry what it shows. The page's behaviour in a
browser is tests/browser's (Playwright)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from imagegate.config import FileConfig
from imagegate.gateway import build_catalog
from imagegate.normalize import resolve_layout

from ..conftest import API_KEY, RunningGateway

CATALOG = build_catalog(FileConfig())
SCRIPT = Path(__file__).parents[2] / "src" / "imagegate" / "server" / "static" / "playground.js"
PANELS_SCRIPT = SCRIPT.with_name("playground-panels.js")  # copy as code, recent results, jobs, usage
AUTH = {"authorization": f"Bearer {API_KEY}"}
RATIO = re.compile(r"^[0-9]+(\.[0-9]+)?:[0-9]+(\.[0-9]+)?$")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    options: list[tuple[str, str, bool]] = field(default_factory=list)  # (value, text, selected)


class Form(HTMLParser):
    """Every element with an id, each label's text and `for`, every button, src/href, data blocks."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, Element] = {}
        self.labels: dict[str, str] = {}  # text -> for
        self.buttons: list[Element] = []
        self.links: list[tuple[str, str]] = []
        self.data_blocks: dict[str, str] = {}
        self._open: list[Element] = []
        self._select: Element | None = None
        self._option: tuple[str, bool] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        element = Element(tag, a)
        for name in ("src", "href"):
            if name in a:
                self.links.append((tag, a[name]))
        if "id" in a:
            self.by_id[a["id"]] = element
        if tag == "select":
            self._select = element
        elif tag == "option":
            self._option = (a.get("value", ""), "selected" in a)
        if tag in ("label", "button", "option", "script"):
            self._open.append(element)
        if tag == "button":
            self.buttons.append(element)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1].tag == tag:
            element = self._open.pop()
            text = " ".join(element.text.split())
            if tag == "label":
                self.labels[text] = element.attrs.get("for", "")
            elif tag == "option" and self._select is not None and self._option is not None:
                self._select.options.append((self._option[0], text, self._option[1]))
            elif tag == "script" and element.attrs.get("type") == "application/json":
                self.data_blocks[element.attrs["id"]] = element.text
            element.text = text
        if tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def labelled(self, text: str) -> Element:
        """The element the label with exactly this text points at (by `for`)."""
        assert text in self.labels, f"no label {text!r}: {sorted(self.labels)}"
        target = self.labels[text]
        assert target in self.by_id, f"label {text!r} points at no element ({target!r})"
        return self.by_id[target]


def get_form(gateway: RunningGateway) -> tuple[httpx.Response, Form]:
    response = httpx.get(f"{gateway.url}/")
    return response, Form(response.text)


def test_the_playground_is_html_with_the_labelled_controls(gateway: RunningGateway) -> None:
    response, form = get_form(gateway)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    key = form.labelled("API key")
    assert key.tag == "input" and key.attrs["type"] == "password"
    assert form.labelled("Prompt").tag == "textarea"
    assert form.labelled("Model").tag == "select"
    assert form.labelled("Aspect ratio").tag == "select"
    assert form.labelled("Resolution").tag == "select"
    images = form.labelled("Input images")
    assert images.tag == "input" and images.attrs["type"] == "file" and "multiple" in images.attrs
    assert images.attrs["accept"] == "image/*"
    generate = [b for b in form.buttons if b.text == "Generate"]
    assert len(generate) == 1 and generate[0].attrs["type"] == "submit"
    # Every visible control of the form has a <label for> (the provider options the script adds too).
    labelled = set(form.labels.values())
    controls = [e for e in form.by_id.values() if e.tag in ("input", "select", "textarea")]
    assert controls and all(e.attrs["id"] in labelled for e in controls), [e.attrs["id"] for e in controls]
    assert form.by_id["form-error"].attrs["role"] == "alert"
    # The mask canvas (shown once there are input images) is named by its visible text.
    canvas = form.by_id["mask-canvas"]
    assert canvas.tag == "canvas" and canvas.attrs["aria-labelledby"] == "mask-label"
    assert "mask-label" in form.by_id


def test_no_other_label_contains_a_contract_name(gateway: RunningGateway) -> None:
    """Browser tests find controls by label text, matched as a substring unless told to be exact:
    no second label may contain "Prompt", "Model", "Aspect ratio", ... (the provider options,
    named prompt_upsampling or allow_fallback_model, are built only when opened, for this)."""
    _, form = get_form(gateway)
    names = ["API key", "Prompt", "Model", "Aspect ratio", "Resolution", "Input images"]
    for name in names:
        matching = [text for text in form.labels if name.lower() in text.lower()]
        assert matching == [name], (name, matching)
    assert [b.text for b in form.buttons if "generate" in b.text.lower()] == ["Generate"]


def test_the_pickers_start_with_the_first_served_models_table(gateway: RunningGateway) -> None:
    """Only Gemini is configured: its first model is picked, and each ratio shows its pixels."""
    _, form = get_form(gateway)
    models = form.labelled("Model").options
    assert [value for value, _, _ in models] == [m.id for m in CATALOG]
    chosen = [value for value, _, selected in models if selected]
    model = CATALOG.get(chosen[0])
    assert model is not None and model.providers.keys() & {"gemini"}
    ratios = form.labelled("Aspect ratio").options
    assert ratios and all(RATIO.match(value) for value, _, _ in ratios)
    expected = [
        (s.aspect_ratio, f"{s.aspect_ratio} ({s.width}x{s.height})")
        for s in model.sizes or []
        if s.resolution == model.default_resolution
    ]
    assert [(value, text) for value, text, _ in ratios] == expected
    assert [value for value, _, selected in ratios if selected] == [model.default_aspect_ratio]
    tiers = form.labelled("Resolution").options
    assert [value for value, _, _ in tiers] == model.resolution_tiers
    assert [value for value, _, selected in tiers if selected] == [model.default_resolution]


def test_the_page_carries_every_models_size_table(gateway: RunningGateway) -> None:
    """Pixel-limit models have no table in their card: the page's data gives what each ratio resolves to."""
    _, form = get_form(gateway)
    shown = json.loads(form.data_blocks["catalog-models"])
    assert set(shown) == {name for m in CATALOG for name in (m.id, *m.aliases)}
    for model in CATALOG:
        rows = {(r["aspect_ratio"], r["resolution"]): (r["width"], r["height"]) for r in shown[model.id]["sizes"]}
        for tier in model.resolution_tiers:
            for ratio in model.supported_ratios():
                layout = resolve_layout(model, aspect_ratio=ratio, resolution=tier)
                if model.sizes is None or (ratio, tier) in rows:
                    assert rows[(ratio, tier)] == (layout.width, layout.height), (model.id, ratio, tier)
        assert shown[model.id]["default_aspect_ratio"] == model.default_aspect_ratio
        for alias in model.aliases:
            assert shown[alias] == shown[model.id]


def test_every_asset_is_same_origin_and_served(gateway: RunningGateway) -> None:
    response, form = get_form(gateway)
    assert form.links
    for tag, url in form.links:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, (tag, url)  # no CDN, no other host
        assert httpx.get(f"{gateway.url}{url}").status_code == 200, url
    scripts = [url for tag, url in form.links if tag == "script"]
    assert scripts == ["/static/playground.js", "/static/playground-panels.js"]  # the panels after the form's
    links = {url for tag, url in form.links if tag == "link"}
    assert links == {"/static/pages.css", "/static/playground.css", "/static/favicon.svg"}


def test_the_content_security_policy_allows_only_this_origin(gateway: RunningGateway) -> None:
    response, _ = get_form(gateway)
    policy = dict(
        (d.split()[0], d.split()[1:]) for d in response.headers["content-security-policy"].split(";") if d.strip()
    )
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no inline script, no eval
    assert policy["img-src"] == ["'self'", "data:", "blob:"]  # results, streamed previews, chosen inputs
    assert policy["frame-ancestors"] == ["'none'"]
    assert "connect-src" not in policy  # default-src 'self': the API calls stay on this origin
    assert response.headers["x-content-type-options"] == "nosniff"


def test_playground_false_gives_404_at_the_root(gateway_factory: Any) -> None:
    gw = gateway_factory(playground=False)
    for path in ("/", "/static/playground.js", "/static/playground-panels.js", "/static/playground.css"):
        response = httpx.get(f"{gw.url}{path}")
        assert response.status_code == 404, path
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_is_valid_javascript_and_keeps_the_key_out_of_urls() -> None:
    subprocess.run(["node", "--check", str(SCRIPT)], check=True, capture_output=True)
    source = SCRIPT.read_text()
    assert "sessionStorage" in source and "Authorization: `Bearer ${key}`" in source
    assert "localStorage" not in source and "?key=" not in source and "api_key=" not in source


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            name = lines[0].removeprefix("event: ")
            events.append((name, json.loads("".join(line.removeprefix("data: ") for line in lines[1:]))))
    return events


def test_the_scripts_streamed_generation_answers_with_what_the_page_shows(gateway: RunningGateway) -> None:
    """As the script sends it: the chosen ratio and tier, stream with two partial images. The
    completed event has a result URL the img can load and the size the option promised."""
    _, form = get_form(gateway)
    model = [v for v, _, s in form.labelled("Model").options if s][0]
    ratio, text, _ = [o for o in form.labelled("Aspect ratio").options if o[0] == "16:9"][0]
    tier = [v for v, _, s in form.labelled("Resolution").options if s][0]
    body = {"model": model, "prompt": "a lighthouse", "aspect_ratio": ratio, "resolution": tier}
    response = httpx.post(
        f"{gateway.url}/v1/images/generations", headers=AUTH, json={**body, "stream": True, "partial_images": 2}
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    completed = [data for name, data in sse_events(response.text) if name == "image_generation.completed"]
    assert len(completed) == 1
    effective = completed[0]["effective"]
    assert text == f"16:9 ({effective['width']}x{effective['height']})"
    assert urlsplit(completed[0]["url"]).path.startswith("/v1/results/")
    image = httpx.get(completed[0]["url"])
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")


def test_the_scripts_multipart_edit_with_several_images(gateway: RunningGateway) -> None:
    def png(colour: str) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(out, format="PNG")
        return out.getvalue()

    _, form = get_form(gateway)
    model = [v for v, _, s in form.labelled("Model").options if s][0]
    files = [("image[]", ("a.png", png("red"), "image/png")), ("image[]", ("b.png", png("blue"), "image/png"))]
    data = {"model": model, "prompt": "make it blue", "stream": "true", "partial_images": "2"}
    response = httpx.post(f"{gateway.url}/v1/images/edits", headers=AUTH, data=data, files=files)
    assert response.status_code == 200
    completed = [d for name, d in sse_events(response.text) if name == "image_edit.completed"]
    assert len(completed) == 1 and base64.b64decode(completed[0]["b64_json"])[:4] == b"\x89PNG"


def test_an_api_error_names_the_field_the_page_shows_it_next_to(gateway: RunningGateway) -> None:
    """A bad size answers a 400 whose `param` is the script's key for the size field."""
    _, form = get_form(gateway)
    model = [v for v, _, s in form.labelled("Model").options if s][0]
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        headers=AUTH,
        json={"model": model, "prompt": "x", "size": "huge", "stream": True, "partial_images": 2},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "size"
    assert 'size: "size"' in SCRIPT.read_text() and form.labelled("Size (WxH, optional)").attrs["id"] == "size"


# --- the panels (static/playground-panels.js): copy as code, recent results, jobs, today's usage ---


def test_the_panels_script_is_served_as_javascript(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.url}/static/playground-panels.js")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert response.text == PANELS_SCRIPT.read_text()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_panels_script_is_valid_javascript_and_keeps_the_key_out_of_code_and_storage() -> None:
    subprocess.run(["node", "--check", str(PANELS_SCRIPT)], check=True, capture_output=True)
    source = PANELS_SCRIPT.read_text()
    # The copied code reads the key from the environment; only results go into localStorage.
    assert "$IMAGEGATE_API_KEY" in source and 'os.environ["IMAGEGATE_API_KEY"]' in source
    assert "process.env.IMAGEGATE_API_KEY" in source
    assert re.findall(r"localStorage\.(\w+)\(([^,)]*)", source) == [
        ("getItem", "RECENT_STORE"),
        ("setItem", "RECENT_STORE"),
        ("removeItem", "RECENT_STORE"),
    ]
    assert (
        "sessionStorage" not in source
        and "?key=" not in source
        and "api_key=" not in source.replace('api_key=os.environ["IMAGEGATE_API_KEY"]', "")
    )


def test_the_panels_have_their_labelled_controls(gateway: RunningGateway) -> None:
    _, form = get_form(gateway)
    buttons = [b.text for b in form.buttons]
    for name in ("Copy as curl", "Copy as Python", "Copy as Node", "Clear recent results", "Refresh jobs"):
        assert buttons.count(name) == 1, (name, buttons)
    assert form.labelled("The code (select it and copy, if the clipboard is not allowed)").tag == "textarea"
    for section in ("recent", "jobs", "usage"):
        heading = form.by_id[section].attrs["aria-labelledby"]
        assert form.by_id[heading].tag == "h2"
    for box in ("jobs-error", "usage-error"):  # a failed call's message is an alert in its section
        assert form.by_id[box].attrs["role"] == "alert"
    assert form.by_id["usage-table"].tag == "table"


def test_the_calls_the_panels_make_answer_what_they_show(gateway: RunningGateway) -> None:
    """As the script asks: the key's jobs (id, status, model, created_at, result) and today's usage
    from UTC midnight in Unix seconds, by model (model, requests, images, cost, currency; a total)."""
    made = httpx.post(
        f"{gateway.url}/v1/images/generations",
        headers={**AUTH, "prefer": "respond-async"},
        json={"model": "gemini-3-pro-image-preview", "prompt": "a kite"},
    )
    assert made.status_code == 202
    assert "/v1/images/jobs?limit=${JOBS_SHOWN}" in PANELS_SCRIPT.read_text()
    jobs = httpx.get(f"{gateway.url}/v1/images/jobs", params={"limit": 10}, headers=AUTH).json()
    assert [j["id"] for j in jobs["data"]] == [made.json()["id"]]
    assert {"id", "status", "model", "created_at", "result", "error"} <= set(jobs["data"][0])
    assert "/v1/usage?start=${utcMidnight()}&group_by=model" in PANELS_SCRIPT.read_text()
    midnight = int(time.time() // 86400 * 86400)
    usage = httpx.get(f"{gateway.url}/v1/usage", params={"start": midnight, "group_by": "model"}, headers=AUTH)
    assert usage.status_code == 200
    fields = {"requests", "images", "cost", "currency"}
    assert fields <= set(usage.json()["total"])
    assert all(fields | {"model"} <= set(row) for row in usage.json()["data"])
    for _ in range(600):  # the job ends before the gateway is stopped
        if httpx.get(f"{gateway.url}/v1/images/jobs/{made.json()['id']}", headers=AUTH).json()["status"] == "succeeded":
            break
        time.sleep(0.05)
