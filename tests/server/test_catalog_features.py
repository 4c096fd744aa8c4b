"""Catalog features end to end (issue 8, section 2), with the official openai SDK as the client:
aliases served and reported as sent, the Gemini binding's GA upstream id, `[model_overrides]` in the
config file, the serving provider's price per tier (`usage.cost`, `usage.cost_estimated`), and the
fallback to bytedance/seedream-5-lite on Replicate.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagegate.config import Settings
from imagegate.errors import ConfigurationError
from imagegate.gateway import Gateway

from ..conftest import API_KEY, RunningGateway, make_settings
from ..fakes.fal import FakeFal
from ..fakes.gemini import FakeGemini, GeminiError
from ..fakes.images import image_size, solid_png
from ..fakes.replicate import CapacityFailure, FakeReplicate

PRO = "gemini-3-pro-image-preview"
SEEDREAM_5 = "bytedance/seedream-5-lite"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def usage(result: Any) -> dict[str, Any]:
    """`usage` with imagegate's fields (the SDK types it, extra fields included)."""
    return dict(result.usage.model_dump())


def adjustments(result: Any) -> dict[str, str]:
    return {a["param"]: a["applied"] for a in result.model_extra["adjustments"]}


def usage_rows(settings: Settings) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.database_path) as db:
        return db.execute("SELECT model, provider, images, cost, cost_estimated FROM usage ORDER BY id").fetchall()


def with_gemini(factory: Any, fake: FakeGemini, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **settings)
    return gw


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imagegate.toml"
    path.write_text(text)
    return path


# --- aliases ---------------------------------------------------------------------------------


def test_models_lists_each_alias_as_its_own_card(gateway: RunningGateway) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{gateway.url}/v1/models", headers=AUTH).json()["data"]}
    assert cards[PRO]["aliases"] == ["gemini-3-pro-image", "nano-banana-pro"]
    assert "alias_of" not in cards[PRO]
    for alias in ("gemini-3-pro-image", "nano-banana-pro"):
        assert cards[alias]["alias_of"] == PRO
        assert cards[alias]["name"] == "Nano Banana Pro" and cards[alias]["sizes"] == cards[PRO]["sizes"]
    ids = [c["id"] for c in httpx.get(f"{gateway.url}/v1/models", headers=AUTH).json()["data"]]
    assert ids[:3] == [PRO, "gemini-3-pro-image", "nano-banana-pro"]  # aliases follow their model


def test_sdk_retrieves_a_model_by_alias(client: openai.OpenAI) -> None:
    model = client.models.retrieve("nano-banana-pro")
    assert model.id == "nano-banana-pro"
    assert model.model_extra is not None and model.model_extra["alias_of"] == PRO


def test_a_request_by_alias_is_served_and_reported_under_the_id_sent(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    response = gateway.client().images.with_raw_response.generate(
        model="nano-banana-pro", prompt="a banana", response_format="b64_json"
    )
    result = response.parse()
    assert response.headers["x-imagegate-model"] == "nano-banana-pro"
    assert usage(result)["model"] == "nano-banana-pro"
    assert result.model_extra["effective"]["model"] == "nano-banana-pro"
    assert usage_rows(gateway.settings)[-1][0] == "nano-banana-pro"
    # Served as Nano Banana Pro, by the Gemini binding's upstream id.
    assert fake_gemini.requests[-1].path == "/v1beta/models/gemini-3-pro-image:generateContent"
    assert image_size(base64.b64decode(result.data[0].b64_json or "")) == (1024, 1024)


def test_the_public_id_calls_the_ga_upstream_id(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = gateway.client().images.with_raw_response.generate(model=PRO, prompt="p", response_format="b64_json")
    assert response.headers["x-imagegate-model"] == PRO
    assert fake_gemini.requests[-1].model == "gemini-3-pro-image"


# --- [model_overrides] -----------------------------------------------------------------------


def test_config_overrides_a_bindings_upstream_id_and_price(
    gateway_factory: Any, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        f'''
[model_overrides."{PRO}".providers.gemini]
upstream_model = "gemini-3-pro-image-preview"
price = {{ per_image = 0.05, by_resolution = {{ "4K" = 0.2 }} }}
''',
    )
    gw = with_gemini(gateway_factory, fake_gemini, config=config)
    result = gw.client().images.generate(model="nano-banana-pro", prompt="p", n=2, response_format="b64_json")
    assert fake_gemini.requests[-1].model == "gemini-3-pro-image-preview"
    assert (usage(result)["cost"], usage(result)["cost_estimated"]) == (pytest.approx(0.10), False)
    card = httpx.get(f"{gw.url}/v1/models/{PRO}", headers=AUTH).json()
    gemini = next(p for p in card["providers"] if p["id"] == "gemini")
    assert gemini["upstream_model"] == "gemini-3-pro-image-preview"
    assert gemini["price"]["per_image"] == 0.05 and gemini["price"]["by_resolution"] == {"4K": 0.2}
    assert card["price"]["per_image"] == 0.067  # the model's listed price is not the binding's


def test_routing_may_name_a_model_by_alias(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_fal: FakeFal, tmp_path: Path
) -> None:
    config = write_config(tmp_path, '[routing]\n"nano-banana-pro" = ["fal", "gemini"]\n')
    gw = with_gemini(
        gateway_factory, fake_gemini, config=config, fal_api_key=fake_fal.api_key, fal_base_url=fake_fal.base_url
    )
    response = gw.client().images.with_raw_response.generate(model=PRO, prompt="p", response_format="b64_json")
    assert response.headers["x-imagegate-provider"] == "fal"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[model_overrides."no-such-model".providers.gemini]', "there is no model 'no-such-model'"),
        (f'[model_overrides."{PRO}".providers.nowhere]', "has no provider 'nowhere'"),
    ],
)
def test_an_override_of_an_unknown_model_or_provider_stops_the_start(
    tmp_path: Path, section: str, message: str
) -> None:
    config = write_config(tmp_path, f'{section}\nupstream_model = "x"\n')
    with pytest.raises(ConfigurationError, match=message):
        Gateway(make_settings(tmp_path, config=config))


def test_an_override_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[model_overrides."{PRO}".providers.gemini]\nupstream_modle = "x"\n')
    with pytest.raises(ValueError, match="upstream_modle"):
        make_settings(tmp_path, config=config).file_config()


# --- usage.cost: the serving provider's price per tier ----------------------------------------


@pytest.mark.parametrize(("resolution", "per_image"), [("1K", 0.134), ("2K", 0.134), ("4K", 0.24)])
def test_gemini_cost_per_tier(gateway: RunningGateway, resolution: str, per_image: float) -> None:
    result = gateway.client().images.generate(
        model=PRO, prompt="p", n=2, response_format="b64_json", extra_body={"resolution": resolution}
    )
    assert usage(result)["cost"] == pytest.approx(2 * per_image)
    assert usage(result)["cost_estimated"] is False
    assert usage_rows(gateway.settings)[-1][2:] == (2, pytest.approx(2 * per_image), 0)


def test_gemini_charges_each_input_image_of_an_edit(gateway: RunningGateway) -> None:
    image = ("in.png", solid_png(64, 64, (1, 2, 3)), "image/png")
    result = gateway.client().images.edit(model=PRO, prompt="p", image=[image, image], n=2, response_format="b64_json")
    # Two calls, each sending both images: 2 x (0.134 + 2 x 0.0011).
    assert usage(result)["cost"] == pytest.approx(2 * (0.134 + 2 * 0.0011))


def test_fal_4k_with_web_search(gateway_factory: Any, fake_fal: FakeFal) -> None:
    gw: RunningGateway = gateway_factory(fal_api_key=fake_fal.api_key, fal_base_url=fake_fal.base_url)
    result = gw.client().images.generate(
        model=PRO, prompt="p", response_format="b64_json", extra_body={"resolution": "4K", "enable_web_search": True}
    )
    assert usage(result)["provider"] == "fal"
    assert usage(result)["cost"] == pytest.approx(2 * 0.15 + 0.015)  # 4K billed at twice the price
    assert usage(result)["cost_estimated"] is False
    plain = gw.client().images.generate(model=PRO, prompt="p", response_format="b64_json")
    assert usage(plain)["cost"] == pytest.approx(0.15)


def test_replicate_cost_is_marked_estimated(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    gw: RunningGateway = gateway_factory(
        replicate_api_key=fake_replicate.api_key, replicate_base_url=fake_replicate.base_url
    )
    result = gw.client().images.generate(model=PRO, prompt="p", response_format="b64_json")
    assert (usage(result)["provider"], usage(result)["cost_estimated"]) == ("replicate", True)
    assert usage(result)["cost"] == pytest.approx(0.067)  # the listed price stands in
    assert usage_rows(gw.settings)[-1][3:] == (pytest.approx(0.067), 1)


def test_failover_inside_one_request_sums_each_providers_price(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_fal: FakeFal
) -> None:
    gw = with_gemini(gateway_factory, fake_gemini, fal_api_key=fake_fal.api_key, fal_base_url=fake_fal.base_url)
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "boom"))  # one of two slots moves on to fal
    result = gw.client().images.generate(model=PRO, prompt="p", n=2, response_format="b64_json")
    assert usage(result)["provider"] == "gemini,fal"
    assert usage(result)["cost"] == pytest.approx(0.134 + 0.15)


def test_models_shows_each_providers_price(gateway: RunningGateway) -> None:
    card = httpx.get(f"{gateway.url}/v1/models/{PRO}", headers=AUTH).json()
    assert "gemini-3-pro-image" in card["notes"]  # the source of the upstream id travels with the card
    prices = {p["id"]: p["price"] for p in card["providers"]}
    assert prices["gemini"]["by_resolution"] == {"1K": 0.134, "2K": 0.134, "4K": 0.24}
    assert prices["gemini"]["per_input_image"] == 0.0011 and prices["gemini"]["estimated"] is False
    assert prices["fal"]["by_resolution"] == {"4K": 0.3} and prices["fal"]["extras"] == {"enable_web_search": 0.015}
    assert prices["replicate"]["estimated"] is True and prices["openai"]["estimated"] is True


# --- allow_fallback_model -> bytedance/seedream-5-lite ---------------------------------------


def test_fallback_to_seedream_5_lite_says_what_it_changed(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate
) -> None:
    gw = with_gemini(
        gateway_factory,
        fake_gemini,
        replicate_api_key=fake_replicate.api_key,
        replicate_base_url=fake_replicate.base_url,
    )
    fake_gemini.default_behaviour = GeminiError(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.")
    fake_replicate.enqueue(CapacityFailure())  # Nano Banana Pro on Replicate; the seedream prediction succeeds
    response = gw.client().images.with_raw_response.generate(
        model="nano-banana-pro",
        prompt="a fox",
        response_format="b64_json",
        extra_body={"allow_fallback_model": True, "aspect_ratio": "4:5", "resolution": "4K", "seed": 5},
    )
    result = response.parse()
    assert response.headers["x-imagegate-model"] == SEEDREAM_5
    changed = adjustments(result)
    assert changed["model"] == f"{SEEDREAM_5} (allow_fallback_model)"
    assert changed["aspect_ratio"] == "3:4"  # Seedream 5 lite has no 4:5
    assert changed["resolution"] == "3K"  # nor 4K
    assert changed["seed"].startswith("not applied")
    reported = {a["param"]: a["requested"] for a in result.model_extra["adjustments"]}
    assert reported["model"] == "nano-banana-pro"  # what the client sent
    assert image_size(base64.b64decode(result.data[0].b64_json or "")) == (2656, 3552)
    sent = fake_replicate.creates[-1]
    assert sent.model == SEEDREAM_5
    assert sent.json["input"] == {"prompt": "a fox", "size": "3K", "aspect_ratio": "3:4"}
    assert (usage(result)["model"], usage(result)["cost_estimated"]) == (SEEDREAM_5, True)


def test_seedream_5_lite_sends_png_natively_and_converts_jpeg(
    gateway_factory: Any, fake_replicate: FakeReplicate
) -> None:
    gw: RunningGateway = gateway_factory(
        replicate_api_key=fake_replicate.api_key, replicate_base_url=fake_replicate.base_url
    )
    client = gw.client()
    png = client.images.generate(
        model=SEEDREAM_5, prompt="p", response_format="b64_json", extra_body={"output_format": "png"}
    )
    assert fake_replicate.creates[-1].json["input"] == {
        "prompt": "p",
        "size": "2K",
        "aspect_ratio": "1:1",
        "output_format": "png",
    }
    assert image_size(base64.b64decode(png.data[0].b64_json or "")) == (2048, 2048)
    jpeg = client.images.generate(
        model=SEEDREAM_5,
        prompt="p",
        response_format="b64_json",
        extra_body={"output_format": "jpeg", "size": "1536x1024"},
    )
    assert "output_format" not in fake_replicate.creates[-1].json["input"]
    assert jpeg.model_extra["effective"]["output_format"] == "jpeg"
    assert base64.b64decode(jpeg.data[0].b64_json or "")[:3] == b"\xff\xd8\xff"
    assert fake_replicate.creates[-1].json["input"]["aspect_ratio"] == "3:2"
