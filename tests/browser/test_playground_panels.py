"""The playground's panels in a real browser (static/playground-panels.js): the request copied as curl,
Python and Node (the first two run against this gateway and must ask the upstream for exactly what the
page asked for; the Node one is checked with `node --check`, the `openai` npm package not being here),
this browser's recent results (kept across a reload, bounded, cleared), the key's jobs (a job made with
`Prefer: respond-async` shows its status, is cancelled from the page, and shows its image once done) and
today's usage (the generation's cost as the usage API counts it). The upstream is the fake Gemini on
loopback; what the page must show is read from the API's own answers, never written here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from ..conftest import API_KEY
from ..fakes.common import Hang
from ..fakes.gemini import FakeGemini, ParsedRequest, parse_request
from .conftest import Browse

FLAGSHIP = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}
RECENT_STORE = "imagegate.recent"


def open_playground(browse: Browse, api_key: str = API_KEY) -> Page:
    page = browse.goto("/")
    page.get_by_label("API key").fill(api_key)
    page.get_by_label("API key").dispatch_event("change")  # the key's models (and panels) are loaded on change
    page.get_by_label("Model").select_option(FLAGSHIP)
    return page


def generate(page: Page) -> None:
    """Click Generate and wait for the result image to have loaded."""
    page.get_by_role("button", name="Generate").click()
    image = page.locator("#results img").first
    expect(image).to_be_visible(timeout=30_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=30_000)


def png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def needs(program: str) -> None:
    """.ci/run installs curl and nodejs from Debian: a missing one fails with the command."""
    if shutil.which(program) is None:
        pytest.fail(f"{program} is missing: apt-get install -y curl nodejs")


def copied(page: Page, language: str) -> str:
    """Press "Copy as <language>" from the keyboard; the code on the clipboard is the code shown."""
    page.get_by_role("button", name=f"Copy as {language}").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#copy-status")).to_contain_text(f"Copied the {language} code")
    code: str = page.evaluate("navigator.clipboard.readText()")
    assert code == page.get_by_label("The code").input_value()
    assert API_KEY not in code  # the key never goes into the code
    return code


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGEGATE_API_KEY": API_KEY}
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def completed_events(sse: str) -> list[dict[str, Any]]:
    """The `*.completed` events of a server-sent event stream (curl prints the stream as it comes)."""
    events = []
    for block in sse.replace("\r", "").split("\n\n"):
        lines = block.split("\n")
        if any(line.startswith("event:") and line.endswith(".completed") for line in lines):
            events.append(json.loads("".join(line[5:].strip() for line in lines if line.startswith("data:"))))
    return events


def last_upstream(fake_gemini: FakeGemini) -> ParsedRequest:
    return parse_request(fake_gemini.requests[-1].json)


def test_copied_curl_and_python_ask_for_what_the_page_asked(
    browse: Browse, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    needs("curl")
    needs("node")
    browse.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=browse.gateway.url)
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse on a cliff at dawn, 'quoted' and \"double\"")
    page.get_by_label("Resolution").select_option("2K")
    page.get_by_label("Aspect ratio").select_option("16:9")
    page.get_by_label("Seed").fill("7")
    page.get_by_role("button", name="Show this model's own options").click()  # a boolean and a string one
    page.get_by_label("allow_fallback_model").select_option("true")
    page.get_by_label("safety_tolerance").select_option("2")
    generate(page)
    asked = last_upstream(fake_gemini)
    assert (asked.aspect_ratio, asked.image_size, asked.seed) == ("16:9", "2K", 7)
    size = page.locator("#effective-size").inner_text()

    curl = copied(page, "curl")
    assert "$IMAGEGATE_API_KEY" in curl and f"{browse.gateway.url}/v1/images/generations" in curl
    assert '"allow_fallback_model": true' in curl and '"safety_tolerance": "2"' in curl
    done = run(["bash", "-c", curl + " --silent --fail"], tmp_path)
    (event,) = completed_events(done.stdout)  # the page asked for a stream: so does the code
    assert f"{event['effective']['width']}x{event['effective']['height']}" == size
    assert last_upstream(fake_gemini) == asked

    python = copied(page, "Python")
    assert 'os.environ["IMAGEGATE_API_KEY"]' in python
    assert 'extra_body={"aspect_ratio": "16:9", "resolution": "2K", "seed": 7, ' in python  # the gateway's own
    assert '"allow_fallback_model": True' in python and '"safety_tolerance": "2"' in python
    done = run([sys.executable, "-c", python], tmp_path)
    name, printed_size = done.stdout.split()
    assert printed_size == size
    with Image.open(tmp_path / name) as saved:
        assert f"{saved.width}x{saved.height}" == size
    assert last_upstream(fake_gemini) == asked
    assert len(fake_gemini.requests) == 3

    node = copied(page, "Node")
    assert "process.env.IMAGEGATE_API_KEY" in node and 'aspect_ratio: "16:9"' in node
    assert "allow_fallback_model: true" in node
    script = tmp_path / "copied.mjs"
    script.write_text(node)
    run(["node", "--check", str(script)], tmp_path)


def test_a_copied_edit_sends_the_same_files_and_mask(browse: Browse, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """Input files are named by their file names, the painted mask is offered as mask.png: run where
    they are, the Python code asks the upstream for exactly what the page's edit asked for."""
    browse.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=browse.gateway.url)
    red = png(tmp_path / "red.png", (64, 48), (200, 30, 30))
    green = png(tmp_path / "green.png", (32, 32), (30, 200, 30))
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("Make it blue")
    page.get_by_label("Input images").set_input_files([str(red), str(green)])
    page.wait_for_function("() => document.getElementById('mask-canvas').width === 64")
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.locator("#mask-canvas")).to_have_attribute("data-painted", "true")
    with page.expect_request("**/v1/images/edits") as caught:
        generate(page)
    sent_mask = caught.value.post_data_buffer
    asked = last_upstream(fake_gemini)

    python = copied(page, "Python")
    assert 'image=[open("red.png", "rb"), open("green.png", "rb")]' in python
    assert 'mask=open("mask.png", "rb")' in python
    with page.expect_download() as download:
        page.get_by_role("link", name="Download mask.png").click()
    download.value.save_as(tmp_path / "mask.png")
    assert sent_mask and (tmp_path / "mask.png").read_bytes() in sent_mask  # the very mask the page sent
    run([sys.executable, "-c", python], tmp_path)
    assert last_upstream(fake_gemini) == asked

    curl = copied(page, "curl")
    assert "-F 'image[]=@\"red.png\"'" in curl and "-F 'mask=@\"mask.png\"'" in curl
    done = run(["bash", "-c", curl + " --silent --fail"], tmp_path)
    assert len(completed_events(done.stdout)) == 1
    assert last_upstream(fake_gemini) == asked

    needs("node")
    node = copied(page, "Node")
    assert 'image: [fs.createReadStream("red.png"), fs.createReadStream("green.png")]' in node
    assert 'mask: fs.createReadStream("mask.png")' in node
    script = tmp_path / "copied.mjs"
    script.write_text(node)
    run(["node", "--check", str(script)], tmp_path)


def test_recent_results_survive_a_reload_and_are_cleared(browse: Browse, fake_gemini: FakeGemini) -> None:
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A red kite")
    generate(page)
    result_src = page.locator("#results img").first.get_attribute("src")
    expect(page.locator("#recent-list li")).to_have_count(1)
    item = page.locator("#recent-list li").first
    thumb = item.locator("img")
    assert (thumb.get_attribute("src") or "").startswith("data:image/jpeg;base64,")  # outlives the URL
    width = page.evaluate("img => img.naturalWidth", thumb.element_handle())
    assert 0 < width <= 160
    expect(item).to_contain_text("A red kite")
    expect(item).to_contain_text(page.locator("#effective-size").inner_text())

    page = browse.goto("/")  # the key stays in this tab's session storage, the results in local storage
    item = page.locator("#recent-list li").first
    expect(page.locator("#recent-list li")).to_have_count(1)
    expect(item).to_contain_text("A red kite")
    use = page.get_by_role("button", name="Use recent result 1 as input")
    expect(use).to_be_visible()  # its URL still answers
    expect(item.get_by_role("link", name="Open recent result 1")).to_have_attribute("href", result_src or "")
    use.click()
    expect(page.locator("#input-list img")).to_have_count(1)

    page.get_by_role("button", name="Clear recent results").click()
    expect(page.locator("#recent-list li")).to_have_count(0)
    expect(page.locator("#recent-status")).to_have_text("Recent results cleared.")
    assert page.evaluate(f"localStorage.getItem('{RECENT_STORE}')") is None
    page = browse.goto("/")
    expect(page.locator("#recent-list li")).to_have_count(0)


def stored_prompts(page: Page, first: str) -> list[str]:
    """The prompts kept in local storage, once the newest is `first`."""
    page.wait_for_function(
        f"first => (JSON.parse(localStorage.getItem('{RECENT_STORE}')) || [{{}}])[0].prompt === first", arg=first
    )
    return [r["prompt"] for r in page.evaluate(f"JSON.parse(localStorage.getItem('{RECENT_STORE}'))")]


def test_recent_results_are_bounded(browse: Browse, fake_gemini: FakeGemini) -> None:
    """At most 12, newest first; when the storage is full the oldest are dropped until it fits."""
    page = browse.goto("/")
    old = [{"url": None, "thumb": None, "prompt": f"old {i}", "model": "m", "size": "", "time": 0} for i in range(12)]
    page.evaluate(f"records => localStorage.setItem('{RECENT_STORE}', JSON.stringify(records))", old)
    page = open_playground(browse)
    expect(page.locator("#recent-list li")).to_have_count(12)
    page.get_by_label("Prompt").fill("The newest")
    generate(page)
    assert stored_prompts(page, "The newest") == ["The newest", *[f"old {i}" for i in range(11)]]
    expect(page.locator("#recent-list li")).to_have_count(12)
    # A full storage: setItem throws QuotaExceededError above three records (as a browser does at its quota).
    page.evaluate(
        "() => { const set = Storage.prototype.setItem; Storage.prototype.setItem = function (k, v) {"
        " if (JSON.parse(v).length > 3) throw new DOMException('full', 'QuotaExceededError');"
        " return set.call(this, k, v); }; }"
    )
    page.get_by_label("Prompt").fill("After the quota")
    generate(page)
    assert stored_prompts(page, "After the quota") == ["After the quota", "The newest", "old 0"]
    expect(page.locator("#recent-list li")).to_have_count(3)


def submit_job(browse: Browse, prompt: str) -> str:
    response = httpx.post(
        f"{browse.gateway.url}/v1/images/generations",
        json={"model": FLAGSHIP, "prompt": prompt},
        headers={**AUTH, "prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_jobs_show_their_status_cancel_and_image(browse: Browse, fake_gemini: FakeGemini) -> None:
    fake_gemini.default_behaviour = Hang(60)  # held upstream until cancelled
    held = submit_job(browse, "A slow one")
    fake_gemini.wait_for_requests(1)
    page = open_playground(browse)
    row = page.locator(f'#jobs-list li[data-job="{held}"]')
    expect(row).to_have_attribute("data-status", "in_progress")
    expect(row).to_contain_text("in_progress")
    expect(row).to_contain_text(FLAGSHIP)
    row.get_by_role("button", name=f"Cancel {held}").click()
    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row.get_by_role("button")).to_have_count(0)
    assert httpx.get(f"{browse.gateway.url}/v1/images/jobs/{held}", headers=AUTH).json()["status"] == "cancelled"

    fake_gemini.default_behaviour = None
    done = submit_job(browse, "A quick one")
    page.get_by_role("button", name="Refresh jobs").click()
    row = page.locator(f'#jobs-list li[data-job="{done}"]')
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)  # read again while it runs
    image = row.locator("img")
    expect(image).to_have_count(1)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    job = httpx.get(f"{browse.gateway.url}/v1/images/jobs/{done}", headers=AUTH).json()
    item = job["result"]["data"][0]
    src = image.get_attribute("src") or ""
    assert src == item["url"] if item.get("url") else src.endswith(item["b64_json"])
    assert page.locator("#jobs-list li").first.get_attribute("data-job") == done  # newest first
    # The job's image is in today's usage, read again when the page saw the job end.
    expect(page.locator("#usage-table tfoot td").nth(1)).to_have_text("1")  # images


def test_todays_usage_shows_the_generations_cost(browse: Browse, fake_gemini: FakeGemini) -> None:
    page = open_playground(browse)
    expect(page.locator("#usage-note")).to_have_text("Nothing yet today.")
    page.get_by_label("Prompt").fill("A lighthouse")
    generate(page)
    usage = httpx.get(f"{browse.gateway.url}/v1/usage", params={"group_by": "model"}, headers=AUTH).json()
    (row,) = usage["data"]
    assert row["model"] == FLAGSHIP and row["requests"] == 1 and row["cost"] > 0
    cells = [f"{row['requests']}", f"{row['images']}", f"{round(row['cost'], 6)} {row['currency']}"]
    body = page.locator("#usage-table tbody tr")
    expect(body).to_have_count(1)
    expect(body.first.locator("th")).to_have_text(FLAGSHIP)
    expect(body.first.locator("td")).to_have_text(cells)
    expect(page.locator("#usage-table tfoot td")).to_have_text(cells)  # one model: its row is the total


def test_a_wrong_key_is_told_in_each_panel_once(browse: Browse) -> None:
    """The API's 401 message: an alert next to the API key field (playground.js), plain text in the
    Jobs and usage panels (a second and third alert would repeat it)."""
    browse.expected_api_statuses.add(401)
    page = open_playground(browse, api_key="sk-wrong")
    response = httpx.get(f"{browse.gateway.url}/v1/images/jobs", headers={"authorization": "Bearer sk-wrong"})
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    expect(page.locator("#jobs-note")).to_contain_text(message)
    expect(page.locator("#usage-note")).to_contain_text(message)
    expect(page.get_by_role("alert").filter(has_text=message)).to_have_count(1)


def test_the_panels_fit_a_phone(browse: Browse, fake_gemini: FakeGemini) -> None:
    browse.page.set_viewport_size({"width": 390, "height": 844})
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse on a very long cliff " * 4)
    generate(page)
    submit_job(browse, "A job")
    page.get_by_role("button", name="Refresh jobs").click()
    expect(page.locator("#jobs-list li")).to_have_count(1)
    page.get_by_role("button", name="Copy as Python").click()
    expect(page.get_by_label("The code")).to_be_visible()
    expect(page.locator("#usage-table")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_without_the_clipboard_the_code_is_shown_selected(browse: Browse, fake_gemini: FakeGemini) -> None:
    """Clipboard writes need a permission the page may not have: the code is then shown, selected."""
    page = open_playground(browse)
    page.evaluate(
        "() => { navigator.clipboard.writeText = () => Promise.reject(new DOMException('no', 'NotAllowedError')); }"
    )
    page.get_by_label("Prompt").fill("A lighthouse")
    page.get_by_role("button", name="Copy as curl").click()
    expect(page.locator("#copy-status")).to_contain_text("The clipboard is not available here")
    code = page.get_by_label("The code")
    expect(code).to_be_focused()
    assert '"prompt": "A lighthouse"' in code.input_value()
    selected = page.evaluate(
        "() => { const t = document.getElementById('code-shown'); return t.value.slice(t.selectionStart, t.selectionEnd); }"
    )
    assert selected == code.input_value()


class TestAGatewayWithoutKeys:
    """No keys configured: the page works with no key typed, and once an answer came without one, the
    panels read the jobs and usage without one too (before that, no key means no call: a keyed gateway
    would only answer 401)."""

    @pytest.fixture
    def gateway(self, gateway_factory: Any, fake_gemini: FakeGemini) -> Any:
        return gateway_factory(api_keys="", gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)

    def test_the_panels_follow_the_first_answer(self, browse: Browse, fake_gemini: FakeGemini) -> None:
        page = browse.goto("/")
        expect(page.locator("#usage-note")).to_have_text("Enter an API key to see its usage.")
        assert not [url for url in browse.requests if "/v1/usage" in url or "/v1/images/jobs" in url]
        page.get_by_label("Model").select_option(FLAGSHIP)
        page.get_by_label("Prompt").fill("A keyless lighthouse")
        generate(page)
        expect(page.locator("#usage-table tfoot td").first).to_have_text("1")
        expect(page.locator("#jobs-note")).to_have_text("No jobs yet.")


def test_a_refused_cancel_shows_the_apis_message_in_jobs(browse: Browse, fake_gemini: FakeGemini) -> None:
    """The job ended after the page listed it: the cancel's 409 message is an alert in the Jobs section."""
    browse.expected_api_statuses.add(409)
    fake_gemini.default_behaviour = Hang(60)
    held = submit_job(browse, "Ended elsewhere")
    fake_gemini.wait_for_requests(1)
    page = open_playground(browse)
    row = page.locator(f'#jobs-list li[data-job="{held}"]')
    expect(row).to_have_attribute("data-status", "in_progress")
    # The page reads the list again every few seconds while a job runs: stop that (pending timers
    # cleared, no new ones) and let a read already under way finish (the section is aria-busy until
    # then), so the row still offers Cancel when the job is cancelled behind the page's back.
    page.evaluate("() => { for (let id = 1; id < 10000; id++) clearTimeout(id); window.setTimeout = () => 0; }")
    expect(page.locator("#jobs")).to_have_attribute("aria-busy", "false")
    cancelled = httpx.post(f"{browse.gateway.url}/v1/images/jobs/{held}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    again = httpx.post(f"{browse.gateway.url}/v1/images/jobs/{held}/cancel", headers=AUTH)
    assert again.status_code == 409
    row.get_by_role("button", name=f"Cancel {held}").click()
    expect(page.locator("#jobs").get_by_role("alert")).to_have_text(again.json()["error"]["message"])


def test_an_expired_result_keeps_its_thumbnail_only(browse: Browse) -> None:
    """A result URL that no longer answers (expired, or from another gateway's store): no "use as input"."""
    browse.expected_api_statuses.add(404)
    page = browse.goto("/")
    gone = f"{browse.gateway.url}/v1/results/expired-long-ago.png"
    assert httpx.head(gone).status_code == 404
    record = {"url": gone, "thumb": None, "prompt": "Old", "model": FLAGSHIP, "size": "1024x1024", "time": 0}
    page.evaluate(f"record => localStorage.setItem('{RECENT_STORE}', JSON.stringify([record]))", record)
    page = browse.goto("/")
    item = page.locator("#recent-list li")
    expect(item).to_contain_text("Its URL has expired")
    expect(item.get_by_role("button")).to_have_count(0)
    expect(item.locator("img")).to_have_count(0)  # no thumbnail was kept, and the URL shows nothing
