"""The catalog beyond Nano Banana Pro, end to end: the official openai SDK -> a real gateway -> the
fake upstreams. Nano Banana (gemini-2.5-flash-image) on Gemini, Replicate and fal; gpt-image-1 on
an OpenAI Images upstream; bytedance/seedream-4 on Replicate; bytedance/seedream-5-lite on Replicate
as Nano Banana Pro's fallback (more of it in test_catalog_features.py).

Each generation test configures one provider only, so the request must be served by it. A test
marked xfail(strict) pins down a gateway change that is still needed (see its reason).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from ..conftest import API_KEY, RunningGateway
from ..fakes.fal import FakeFal
from ..fakes.gemini import FLASH_SIZES, FakeGemini, GeminiError
from ..fakes.images import color_for, image_size, pixel_at, solid_png
from ..fakes.openai_upstream import FakeOpenAI
from ..fakes.replicate import CapacityFailure, FakeReplicate

PRO = "gemini-3-pro-image-preview"
FLASH = "gemini-2.5-flash-image"
GPT = "gpt-image-1"
SEEDREAM = "bytedance/seedream-4"
SEEDREAM_5 = "bytedance/seedream-5-lite"
AUTH = {"authorization": f"Bearer {API_KEY}"}
INPUT = ("in.png", solid_png(64, 48, (10, 200, 30)), "image/png")  # 4:3


def only_gemini(factory: Any, fake: FakeGemini, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **settings)
    return gw


def only_replicate(factory: Any, fake: FakeReplicate, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(replicate_api_key=fake.api_key, replicate_base_url=fake.base_url, **settings)
    return gw


def only_fal(factory: Any, fake: FakeFal, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(fal_api_key=fake.api_key, fal_base_url=fake.base_url, **settings)
    return gw


def only_openai(factory: Any, fake: FakeOpenAI, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(openai_api_key=fake.api_key, openai_base_url=fake.base_url, **settings)
    return gw


def decoded(result: Any, index: int = 0) -> bytes:
    return base64.b64decode(result.data[index].b64_json or "")


def effective(result: Any) -> dict[str, Any]:
    return dict(result.model_extra["effective"])


def usage(result: Any) -> dict[str, Any]:
    """`usage` with imagegate's fields (the SDK types it, extra fields included)."""
    return dict(result.usage.model_dump())


def adjustments(result: Any) -> list[dict[str, str]]:
    return list(result.model_extra["adjustments"])


def unsupported(excinfo: pytest.ExceptionInfo[openai.BadRequestError]) -> dict[str, Any]:
    body = excinfo.value.body
    assert isinstance(body, dict)
    return body


# --- GET /models -----------------------------------------------------------------------------


def test_models_list_has_every_catalog_model(gateway_factory: Any) -> None:
    client = gateway_factory().client()
    ids = [m.id for m in client.models.list()]
    assert {PRO, FLASH, GPT, SEEDREAM} <= set(ids)
    assert ids[0] == PRO
    assert client.models.retrieve(SEEDREAM).id == SEEDREAM  # a model id with a slash


def test_model_cards_show_each_models_own_sizes_and_price(gateway_factory: Any) -> None:
    gw = gateway_factory()
    cards = {c["id"]: c for c in httpx.get(f"{gw.url}/v1/models", headers=AUTH).json()["data"]}
    flash, gpt, seedream = cards[FLASH], cards[GPT], cards[SEEDREAM]
    assert len(flash["sizes"]) == 10 and flash["resolution_tiers"] == ["1K"] and flash["pixel_limits"] is None
    assert flash["price"]["per_image"] == 0.039
    assert [p["id"] for p in flash["providers"]] == ["gemini", "replicate", "fal", "vertex"]
    assert {(s["width"], s["height"]) for s in gpt["sizes"]} == {(1024, 1024), (1536, 1024), (1024, 1536)}
    assert gpt["parameters"]["quality"]["values"] == ["low", "medium", "high", "auto"]
    assert [p["id"] for p in gpt["providers"]] == ["openai"]
    assert seedream["sizes"] is None
    assert seedream["pixel_limits"]["max_side"] == 4096 and seedream["pixel_limits"]["min_side"] == 1024
    assert seedream["aspect_ratios"] == ["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"]
    assert seedream["price"]["per_image"] == 0.03
    assert all(card["available"] is False for card in cards.values())


# --- Nano Banana (gemini-2.5-flash-image) ----------------------------------------------------


def test_nano_banana_on_gemini(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = only_gemini(gateway_factory, fake_gemini)
    response = gw.client().images.with_raw_response.generate(
        model=FLASH, prompt="a banana", response_format="b64_json", extra_body={"aspect_ratio": "16:9"}
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "gemini"
    assert response.headers["x-imagegate-model"] == FLASH
    assert image_size(decoded(result)) == FLASH_SIZES["16:9"] == (1344, 768)
    assert pixel_at(decoded(result))[:3] == color_for("a banana")
    sent = fake_gemini.requests[-1]
    assert sent.model == FLASH and sent.path == f"/v1beta/models/{FLASH}:generateContent"
    assert sent.json["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"
    assert effective(result) | {"seed": None} == effective(result)
    assert (effective(result)["width"], effective(result)["height"]) == (1344, 768)
    assert adjustments(result) == []
    assert usage(result)["cost"] == pytest.approx(0.039)


def test_nano_banana_maps_any_tier_and_size_to_its_one_table(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    client = only_gemini(gateway_factory, fake_gemini).client()
    result = client.images.generate(
        model=FLASH, prompt="p", response_format="b64_json", extra_body={"resolution": "4K", "aspect_ratio": "2:3"}
    )
    assert image_size(decoded(result)) == (832, 1248)
    assert {"param": "resolution", "requested": "4K", "applied": "1K"} in adjustments(result)

    result = client.images.generate(model=FLASH, prompt="p", size="1920x1080", response_format="b64_json")
    assert image_size(decoded(result)) == (1344, 768)
    assert fake_gemini.requests[-1].json["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"
    assert {"param": "size", "requested": "1920x1080", "applied": "1344x768"} in adjustments(result)


def test_nano_banana_on_gemini_sends_no_image_size(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    """gemini-2.5-flash-image is 1K only (spec 2.2: do not send imageSize); its binding declares
    `resolution` emulated, and the adapter leaves imageSize out."""
    client = only_gemini(gateway_factory, fake_gemini).client()
    client.images.generate(model=FLASH, prompt="p", response_format="b64_json")
    assert fake_gemini.requests[-1].json["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1"}


def test_nano_banana_pro_still_sends_its_image_size(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    client = only_gemini(gateway_factory, fake_gemini).client()
    client.images.generate(model=PRO, prompt="p", response_format="b64_json", extra_body={"resolution": "2K"})
    assert fake_gemini.requests[-1].json["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "2K"}


def test_nano_banana_takes_at_most_three_input_images(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    client = only_gemini(gateway_factory, fake_gemini).client()
    with pytest.raises(openai.BadRequestError):
        client.images.edit(model=FLASH, prompt="p", image=[INPUT] * 4)
    assert fake_gemini.requests == []
    result = client.images.edit(model=FLASH, prompt="p", image=[INPUT] * 3, response_format="b64_json")
    assert image_size(decoded(result)) == FLASH_SIZES["4:3"]  # an edit keeps its input's shape


def test_nano_banana_on_replicate(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    gw = only_replicate(gateway_factory, fake_replicate)
    response = gw.client().images.with_raw_response.generate(
        model=FLASH,
        prompt="a banana",
        response_format="b64_json",
        output_format="png",
        extra_body={"aspect_ratio": "9:16"},
    )
    assert response.headers["x-imagegate-provider"] == "replicate"
    assert image_size(decoded(response.parse())) == (768, 1344)
    create = fake_replicate.creates[-1]
    assert create.path == "/v1/models/google/nano-banana/predictions"
    # google/nano-banana's schema: no resolution (one tier), output_format as Replicate spells it.
    assert create.json["input"] == {"prompt": "a banana", "aspect_ratio": "9:16", "output_format": "png"}


def test_nano_banana_seed_is_refused_when_no_configured_provider_has_it(
    gateway_factory: Any, fake_replicate: FakeReplicate
) -> None:
    client = only_replicate(gateway_factory, fake_replicate).client()
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.generate(model=FLASH, prompt="p", extra_body={"seed": 7})
    error = unsupported(excinfo)
    assert (error["code"], error["param"]) == ("unsupported_parameter", "seed")
    assert fake_replicate.requests == []


def test_nano_banana_on_fal(gateway_factory: Any, fake_fal: FakeFal) -> None:
    gw = only_fal(gateway_factory, fake_fal)
    response = gw.client().images.with_raw_response.generate(
        model=FLASH, prompt="two bananas", n=2, response_format="b64_json", extra_body={"aspect_ratio": "3:2"}
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "fal"
    assert [image_size(decoded(result, i)) for i in range(2)] == [(1248, 832)] * 2
    (submit,) = fake_fal.submits
    assert submit.path == "/fal-ai/nano-banana"
    assert submit.json == {"prompt": "two bananas", "num_images": 2, "aspect_ratio": "3:2"}


def test_nano_banana_edit_on_fal_uses_the_edit_endpoint(gateway_factory: Any, fake_fal: FakeFal) -> None:
    client = only_fal(gateway_factory, fake_fal).client()
    result = client.images.edit(model=FLASH, prompt="make it yellow", image=INPUT, response_format="b64_json")
    assert image_size(decoded(result)) == FLASH_SIZES["4:3"]
    (submit,) = fake_fal.submits
    assert submit.path == "/fal-ai/nano-banana/edit"
    assert submit.json["aspect_ratio"] == "4:3" and len(submit.json["image_urls"]) == 1
    assert "resolution" not in submit.json and "seed" not in submit.json


# --- gpt-image-1 -----------------------------------------------------------------------------


def test_gpt_image_1_generation(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.fixed_size_models = {GPT}
    gw = only_openai(gateway_factory, fake_openai)
    response = gw.client().images.with_raw_response.generate(
        model=GPT,
        prompt="a lighthouse",
        size="1536x1024",
        quality="high",
        background="opaque",
        moderation="low",
        output_format="webp",
        n=2,
        response_format="b64_json",
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "openai"
    assert response.headers["x-imagegate-model"] == GPT
    assert [image_size(decoded(result, i)) for i in range(2)] == [(1536, 1024)] * 2
    assert result.output_format == "webp"
    (sent,) = [r.json for r in fake_openai.requests]
    assert sent["model"] == GPT and sent["size"] == "1536x1024" and sent["n"] == 2
    assert (sent["quality"], sent["background"], sent["moderation"]) == ("high", "opaque", "low")
    assert sent["output_format"] == "webp"
    # aspect_ratio and resolution are folded into size; OpenAI has no seed.
    assert not {"aspect_ratio", "resolution", "seed"} & set(sent)
    assert adjustments(result) == []
    # OpenAI's price for high quality at 1536x1024 (the binding's by_quality_size table).
    assert usage(result)["cost"] == pytest.approx(2 * 0.25)
    assert usage(result)["cost_estimated"] is False


def test_gpt_image_1_maps_other_sizes_to_its_three(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.fixed_size_models = {GPT}
    client = only_openai(gateway_factory, fake_openai).client()
    result = client.images.generate(model=GPT, prompt="p", size="1024x1792", response_format="b64_json")
    assert fake_openai.requests[-1].json["size"] == "1024x1536"
    assert image_size(decoded(result)) == (1024, 1536)
    assert {"param": "size", "requested": "1024x1792", "applied": "1024x1536"} in adjustments(result)
    client.images.generate(model=GPT, prompt="p", response_format="b64_json", extra_body={"aspect_ratio": "16:9"})
    assert fake_openai.requests[-1].json["size"] == "1536x1024"


def test_gpt_image_1_edit_is_multipart_with_input_fidelity(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.fixed_size_models = {GPT}
    client = only_openai(gateway_factory, fake_openai).client()
    result = client.images.edit(
        model=GPT, prompt="add a hat", image=[INPUT, INPUT], input_fidelity="high", response_format="b64_json"
    )
    assert image_size(decoded(result)) == (1536, 1024)  # a 4:3 input: 3:2 is the nearest of the three
    recorded = fake_openai.requests[-1]
    assert recorded.path == "/v1/images/edits"
    assert recorded.form is not None
    assert (recorded.form["model"], recorded.form["input_fidelity"], recorded.form["size"]) == (
        GPT,
        "high",
        "1536x1024",
    )
    assert [f.field_name for f in recorded.files or []] == ["image[]", "image[]"]


def test_gpt_image_1_refuses_seed_and_dall_e_quality_and_skips_edit_moderation(
    gateway_factory: Any, fake_openai: FakeOpenAI
) -> None:
    client = only_openai(gateway_factory, fake_openai).client()
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.generate(model=GPT, prompt="p", extra_body={"seed": 1})
    assert (unsupported(excinfo)["code"], unsupported(excinfo)["param"]) == ("unsupported_parameter", "seed")
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.generate(model=GPT, prompt="p", quality="hd")  # a DALL-E 3 value, outside gpt-image-1's
    assert unsupported(excinfo)["param"] == "quality"
    assert fake_openai.requests == []
    # moderation is OpenAI's standard field: gpt-image-1 has none for edits, so it is not applied.
    edited = client.images.edit(
        model=GPT, prompt="p", image=INPUT, response_format="b64_json", extra_body={"moderation": "low"}
    )
    assert {"param": "moderation", "requested": "low", "applied": f"not applied (model {GPT} lacks it)"} in (
        edited.model_extra or {}
    )["adjustments"]
    form = fake_openai.requests[-1].form
    assert form is not None and "moderation" not in form


def test_gpt_image_1_never_sends_response_format(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    """GPT image models always answer b64_json and reject response_format; gpt-image-1's binding
    declares it emulated with no `to`, so the adapter does not send it."""
    fake_openai.reject_response_format_models = {GPT}
    client = only_openai(gateway_factory, fake_openai).client()
    result = client.images.generate(model=GPT, prompt="p", response_format="b64_json")
    assert image_size(decoded(result)) == (1024, 1024)
    assert "response_format" not in fake_openai.requests[-1].json
    client.images.edit(model=GPT, prompt="p", image=INPUT, response_format="b64_json")
    assert fake_openai.requests[-1].form is not None and "response_format" not in fake_openai.requests[-1].form


def test_the_openai_binding_of_nano_banana_pro_still_asks_for_b64(
    gateway_factory: Any, fake_openai: FakeOpenAI
) -> None:
    """The data side of the response_format change: an OpenAI-compatible imagegate upstream still gets it."""
    fake_openai.reject_response_format_models = {GPT}  # only GPT image models refuse it
    client = only_openai(gateway_factory, fake_openai).client()
    client.images.generate(model=PRO, prompt="p", response_format="b64_json")
    assert fake_openai.requests[-1].json["response_format"] == "b64_json"


# --- bytedance/seedream-4 --------------------------------------------------------------------


def test_seedream_4_on_replicate(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    gw = only_replicate(gateway_factory, fake_replicate)
    response = gw.client().images.with_raw_response.generate(
        model=SEEDREAM,
        prompt="a city",
        response_format="b64_json",
        extra_body={"aspect_ratio": "16:9", "resolution": "2K"},
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "replicate"
    assert response.headers["x-imagegate-model"] == SEEDREAM
    assert image_size(decoded(result)) == (2736, 1536)
    assert (effective(result)["width"], effective(result)["height"]) == (2736, 1536)
    create = fake_replicate.creates[-1]
    assert create.path == "/v1/models/bytedance/seedream-4/predictions"
    assert create.json["input"] == {"prompt": "a city", "size": "custom", "width": 2736, "height": 1536}
    assert adjustments(result) == []
    assert usage(result)["cost"] == pytest.approx(0.03)


def test_seedream_4_defaults_to_2k_square_and_n_is_one_prediction_each(
    gateway_factory: Any, fake_replicate: FakeReplicate
) -> None:
    client = only_replicate(gateway_factory, fake_replicate).client()
    result = client.images.generate(model=SEEDREAM, prompt="p", n=2, response_format="b64_json")
    assert [image_size(decoded(result, i)) for i in range(2)] == [(2048, 2048)] * 2
    assert len(fake_replicate.creates) == 2
    for create in fake_replicate.creates:
        assert create.json["input"] == {"prompt": "p", "size": "custom", "width": 2048, "height": 2048}


def test_seedream_4_size_with_a_supported_ratio(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    client = only_replicate(gateway_factory, fake_replicate).client()
    result = client.images.generate(model=SEEDREAM, prompt="p", size="1536x1024", response_format="b64_json")
    assert image_size(decoded(result)) == (1536, 1024)
    assert adjustments(result) == []


def test_seedream_4_custom_size_is_sent_as_width_and_height(
    gateway_factory: Any, fake_replicate: FakeReplicate
) -> None:
    with only_replicate(gateway_factory, fake_replicate).client() as client:
        result = client.images.generate(model=SEEDREAM, prompt="p", size="2048x1024", response_format="b64_json")
    assert image_size(decoded(result)) == (2048, 1024)
    sent = fake_replicate.creates[-1].json["input"]
    assert (sent["size"], sent["width"], sent["height"]) == ("custom", 2048, 1024)


def test_seedream_4_edit_sends_image_input(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    client = only_replicate(gateway_factory, fake_replicate).client()
    result = client.images.edit(
        model=SEEDREAM, prompt="p", image=INPUT, response_format="b64_json", extra_body={"resolution": "1K"}
    )
    sent = fake_replicate.creates[-1].json["input"]
    assert len(sent["image_input"]) == 1 and sent["image_input"][0].startswith("data:image/png;base64,")
    assert (sent["size"], sent["width"], sent["height"]) == ("custom", 1360, 1024)
    assert image_size(decoded(result)) == (1360, 1024)  # 1K at 4:3, short side raised to 1024


def test_seedream_4_refuses_seed(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    client = only_replicate(gateway_factory, fake_replicate).client()
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.images.generate(model=SEEDREAM, prompt="p", extra_body={"seed": 3})
    error = unsupported(excinfo)
    assert (error["code"], error["param"]) == ("unsupported_parameter", "seed")
    assert "replicate" in error["message"]
    assert fake_replicate.requests == []


# --- allow_fallback_model: Nano Banana Pro at capacity -> Seedream 5 lite ------------------------


def pro_at_capacity(gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate) -> OpenAI:
    """Gemini and Replicate both serve Nano Banana Pro, and both are at capacity."""
    gw: RunningGateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        replicate_api_key=fake_replicate.api_key,
        replicate_base_url=fake_replicate.base_url,
    )
    fake_gemini.default_behaviour = GeminiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    fake_replicate.enqueue(CapacityFailure())  # the Nano Banana Pro prediction; Seedream's succeeds
    return gw.client()


def test_allow_fallback_model_serves_seedream_5_lite_when_nano_banana_pro_is_at_capacity(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate
) -> None:
    client = pro_at_capacity(gateway_factory, fake_gemini, fake_replicate)
    response = client.images.with_raw_response.generate(
        model=PRO,
        prompt="a fox",
        response_format="b64_json",
        extra_body={"allow_fallback_model": True, "aspect_ratio": "16:9"},
    )
    result = response.parse()
    assert response.headers["x-imagegate-model"] == SEEDREAM_5
    assert response.headers["x-imagegate-provider"] == "replicate"
    assert f"model={PRO}->{SEEDREAM_5} (allow_fallback_model)" in response.headers["x-imagegate-adjusted"]
    assert usage(result)["model"] == SEEDREAM_5
    assert usage(result)["cost"] == pytest.approx(0.03) and usage(result)["cost_estimated"] is True
    width, height = effective(result)["width"], effective(result)["height"]
    assert image_size(decoded(result)) == (width, height) == (2736, 1536)  # Seedream's default tier, 2K
    assert len(fake_gemini.requests) == 1
    pro_create, seedream_create = fake_replicate.creates
    assert pro_create.model == "google/nano-banana-pro"
    assert pro_create.json["input"]["allow_fallback_model"] is True
    assert seedream_create.model == SEEDREAM_5
    assert "allow_fallback_model" not in seedream_create.json["input"]
    sent = seedream_create.json["input"]
    assert (sent["size"], sent["aspect_ratio"]) == ("2K", "16:9")  # 5 lite takes tiers, never width/height
    assert "width" not in sent and "height" not in sent


def test_without_allow_fallback_model_capacity_is_a_503(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate
) -> None:
    client = pro_at_capacity(gateway_factory, fake_gemini, fake_replicate)
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.images.generate(model=PRO, prompt="a fox")
    assert excinfo.value.status_code == 503
    assert [c.model for c in fake_replicate.creates] == ["google/nano-banana-pro"]


def test_fallback_leaves_out_parameters_the_fallback_model_lacks(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate
) -> None:
    with pro_at_capacity(gateway_factory, fake_gemini, fake_replicate) as client:
        response = client.images.with_raw_response.generate(
            model=PRO,
            prompt="a fox",
            response_format="b64_json",
            extra_body={"allow_fallback_model": True, "safety_filter_level": "block_only_high"},
        )
    assert response.headers["x-imagegate-model"] == SEEDREAM_5
    assert "safety_filter_level" not in fake_replicate.creates[-1].json["input"]
    assert "safety_filter_level=block_only_high->" in response.headers["x-imagegate-adjusted"]
