"""Result URLs on another origin than the page's: results presigned in S3
(IMAGEGATE_RESULTS_PRESIGN) or an IMAGEGATE_PUBLIC_URL on another host. The page's CSP allows
images from its own origin only (and data: and blob:), so the playground shows the answer's own
base64 there instead of an image the browser would refuse."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini
from .conftest import Browse
from .test_playground import open_playground

ELSEWHERE = "http://results.example.invalid:9"  # never answers: nothing may be asked of it


@pytest.fixture
def gateway(gateway_factory: Any, fake_gemini: FakeGemini) -> RunningGateway:
    """The browse fixture's gateway, with its result URLs on another origin."""
    gw: RunningGateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, public_url=ELSEWHERE
    )
    return gw


def test_a_result_url_on_another_origin_is_shown_from_the_answers_base64(browse: Browse) -> None:
    # The answer does carry the other origin's URL (and the base64: both by default).
    answer = httpx.post(
        f"{browse.gateway.url}/v1/images/generations",
        json={"prompt": "A lighthouse"},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    assert answer["data"][0]["url"].startswith(f"{ELSEWHERE}/v1/results/") and answer["data"][0]["b64_json"]
    page = open_playground(browse)
    page.get_by_label("Prompt").fill("A lighthouse")
    page.get_by_role("button", name="Generate").click()
    image = page.locator("#results img").first
    expect(image).to_be_visible(timeout=30_000)
    assert (image.get_attribute("src") or "").startswith("data:image/png;base64,")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=30_000)
    # "Use as input" works from it too (no fetch of the other origin).
    page.get_by_role("button", name="Use result 1 as input").click()
    expect(page.locator("#status")).to_contain_text("added to the input images")
    assert not [url for url in browse.requests if url.startswith(ELSEWHERE)]
