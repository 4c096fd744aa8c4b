"""GET models: capabilities, sizes, price and per-provider parameter handling, as data."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini
from ..fakes.openai_upstream import FakeOpenAI

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def test_sdk_lists_and_retrieves_the_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"


def test_model_card_holds_the_spec(gateway: RunningGateway) -> None:
    card = httpx.get(f"{gateway.url}/v1/models/{MODEL}", headers=AUTH).json()
    assert card["name"] == "Nano Banana Pro"
    assert card["modes"] == ["t2i", "edit"]
    assert card["price"]["per_image"] == 0.067
    assert len(card["sizes"]) == 30
    assert {"aspect_ratio": "21:9", "resolution": "4K", "width": 6256, "height": 2681} in card["sizes"]
    assert card["resolution_tiers"] == ["1K", "2K", "4K"]
    params = card["parameters"]
    assert (params["prompt"]["t2i"], params["prompt"]["edit"]) == ("required", "required")
    assert (params["image"]["t2i"], params["image"]["edit"]) == ("not_available", "required")
    assert params["response_format"]["default"] == "both"
    assert params["safety_tolerance"]["values"] == ["1", "2", "3", "4", "5", "6"]
    assert card["available"] is True
    gemini = next(p for p in card["providers"] if p["id"] == "gemini")
    assert gemini["configured"] is True
    handling = {name: h["handling"] for name, h in gemini["parameters"].items()}
    assert handling["n"] == "emulated"
    assert handling["seed"] == "renamed" and gemini["parameters"]["seed"]["to"] == "generationConfig.seed"
    assert handling["size"] == "converted"
    assert handling["allow_fallback_model"] == "emulated"  # the gateway's routing falls back
    assert set(handling.values()) <= {"passthrough", "renamed", "converted", "emulated", "not_available"}


def test_unconfigured_provider_is_shown_as_such(gateway_factory: Any) -> None:
    gw = gateway_factory()
    card = httpx.get(f"{gw.url}/v1/models/{MODEL}", headers=AUTH).json()
    assert card["available"] is False
    assert all(p["configured"] is False for p in card["providers"])


def test_unknown_model_is_404_model_not_found(gateway: RunningGateway, client: openai.OpenAI) -> None:
    response = httpx.get(f"{gateway.url}/v1/models/dall-e-9", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-9")


def test_openai_upstream_serves_the_model_when_gemini_is_absent(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    gw = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    response = gw.client().images.with_raw_response.generate(
        model=MODEL, prompt="via openai", n=3, extra_body={"aspect_ratio": "16:9"}
    )
    assert response.headers["x-imagegate-provider"] == "openai"
    assert len(response.parse().data) == 3
    sent = fake_openai.requests[-1].json
    assert sent["model"] == MODEL and sent["n"] == 3  # n passes through: one call
    assert (sent["size"], sent["aspect_ratio"], sent["resolution"]) == ("1365x768", "16:9", "1K")
    assert sent["response_format"] == "b64_json"
    assert len(fake_openai.requests) == 1


def test_gemini_is_preferred_when_both_are_configured(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        openai_api_key=fake_openai.api_key,
        openai_base_url=fake_openai.base_url,
    )
    response = gw.client().images.with_raw_response.generate(model=MODEL, prompt="p")
    assert response.headers["x-imagegate-provider"] == "gemini"
    assert fake_openai.requests == []


def test_config_file_adds_a_model_and_routing(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI, tmp_path: Any
) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text(f'''
[providers.openai]
api_key = "{fake_openai.api_key}"
base_url = "{fake_openai.base_url}"

[routing]
"{MODEL}" = ["openai", "gemini"]

[[models]]
id = "tiny-flex"
name = "Tiny flexible model"
modes = ["t2i"]
resolution_kind = "megapixels"
resolution_tiers = ["0.25", "1"]
default_resolution = "1"
aspect_ratios = ["1:1", "16:9"]
pixel_limits = {{ max_side = 1024, max_pixels = 1048576, multiple_of = 16 }}
price = {{ per_image = 0.01 }}
[models.parameters.prompt]
type = "string"
description = "prompt"
t2i = "required"
edit = "not_available"
[models.providers.openai]
upstream_model = "upstream-tiny"
max_images_per_call = 4
[models.providers.openai.parameters.size]
handling = "converted"
''')
    gw = gateway_factory(config=config, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    response = gw.client().images.with_raw_response.generate(model=MODEL, prompt="p", response_format="b64_json")
    assert response.headers["x-imagegate-provider"] == "openai"  # routing order from the file

    result = gw.client().images.generate(model="tiny-flex", prompt="p", size="3000x1500", response_format="b64_json")
    sent = fake_openai.requests[-1].json
    assert sent["model"] == "upstream-tiny"
    assert sent["size"] == "1024x512"  # clamped to max_side, ratio kept
    assert result.model_extra["effective"]["provider"] == "openai"
    ids = [m["id"] for m in httpx.get(f"{gw.url}/v1/models", headers=AUTH).json()["data"]]
    assert ids[0] == MODEL and ids[-1] == "tiny-flex" and len(ids) == len(set(ids))
