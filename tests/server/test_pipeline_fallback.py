"""A fallback to another model, end to end: it re-plans and re-dispatches over the inputs the
request already loaded, so an image URL is fetched once, not once per model."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from openai.types import ImagesResponse

from ..fakes.gemini import FakeGemini, GeminiError
from ..fakes.image_host import PNG, ImageHost
from ..fakes.replicate import CapacityFailure, FakeReplicate

PRO = "gemini-3-pro-image-preview"
SEEDREAM_5 = "bytedance/seedream-5-lite"


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    with ImageHost() as host:
        yield host


def test_an_edit_that_falls_back_fetches_its_image_url_once(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate, image_host: ImageHost
) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        replicate_api_key=fake_replicate.api_key,
        replicate_base_url=fake_replicate.base_url,
    )
    fake_gemini.default_behaviour = GeminiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    fake_replicate.enqueue(CapacityFailure())  # Nano Banana Pro on Replicate; the Seedream prediction succeeds
    answer = gw.client().post(
        "/images/edits",
        cast_to=ImagesResponse,
        body={
            "model": PRO,
            "prompt": "make it brighter",
            "response_format": "b64_json",
            "allow_fallback_model": True,
            "images": [{"image_url": f"{image_host.url}/a.png"}],
        },
    )
    assert answer.data and answer.data[0].b64_json
    assert answer.model_extra is not None and answer.model_extra["effective"]["model"] == SEEDREAM_5
    assert image_host.hits == ["/a.png"]  # fetched for Nano Banana Pro, reused for Seedream
    assert len(fake_gemini.requests) == 1
    pro_create, seedream_create = fake_replicate.creates
    assert (pro_create.model, seedream_create.model) == ("google/nano-banana-pro", SEEDREAM_5)
    # Both models were sent the image that was fetched, as a data URI.
    host_png = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert pro_create.json["input"]["image_input"] == seedream_create.json["input"]["image_input"] == [host_png]
