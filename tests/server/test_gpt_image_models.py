"""OpenAI's current GPT image models end to end: the official openai SDK -> a real gateway -> the
fake OpenAI Images upstream with the real per-model rules on (`with_gpt_image_rules`: no
`response_format`, three sizes except gpt-image-2's flexible WxH, no `input_fidelity` on
gpt-image-1-mini and gpt-image-2, no transparent background on gpt-image-2).

Facts: the provider wire-format reference section 1; prices from OpenAI's pricing page (see the
`source` of each binding's price in data/models.json).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.images import detect_mime, image_size, solid_png
from ..fakes.openai_upstream import JPEG_COMMENT, FakeOpenAI

AUTH = {"authorization": f"Bearer {API_KEY}"}
FIXED_SIZE_MODELS = ("gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest")
NEW_MODELS = ("gpt-image-2", *FIXED_SIZE_MODELS)
INPUT = ("in.png", solid_png(64, 48, (10, 200, 30)), "image/png")
MASK = ("mask.png", solid_png(64, 48, (0, 0, 0, 0)), "image/png")
# OpenAI's price of one high-quality 1536x1024 image, per model (the pricing page's tables).
HIGH_LANDSCAPE = {"gpt-image-2": 0.165, "gpt-image-1.5": 0.2, "gpt-image-1-mini": 0.052, "chatgpt-image-latest": 0.2}


@pytest.fixture
def gpt(gateway_factory: Any, fake_openai: FakeOpenAI) -> RunningGateway:
    """A gateway whose only provider is the fake OpenAI upstream, with the real model rules."""
    fake_openai.with_gpt_image_rules()
    gw: RunningGateway = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    return gw


def decoded(result: Any, index: int = 0) -> bytes:
    return base64.b64decode(result.data[index].b64_json or "")


def extras(result: Any, name: str) -> Any:
    return (result.model_extra or {})[name]


@pytest.mark.parametrize("model", NEW_MODELS)
def test_generation_passes_every_gpt_image_parameter(gpt: RunningGateway, fake_openai: FakeOpenAI, model: str) -> None:
    response = gpt.client().images.with_raw_response.generate(
        model=model,
        prompt="a lighthouse",
        size="1536x1024",
        quality="high",
        background="opaque",
        moderation="low",
        output_format="jpeg",
        output_compression=60,
        n=2,
        response_format="b64_json",
    )
    result = response.parse()
    assert (response.headers["x-imagegate-provider"], response.headers["x-imagegate-model"]) == ("openai", model)
    (sent,) = [r.json for r in fake_openai.requests]
    assert sent == {
        "model": model,
        "prompt": "a lighthouse",
        "n": 2,
        "size": "1536x1024",
        "quality": "high",
        "background": "opaque",
        "moderation": "low",
        "output_format": "jpeg",
        "output_compression": 60,
    }
    assert result.output_format == "jpeg"
    assert extras(result, "adjustments") == []
    usage = result.usage.model_dump()
    assert usage["cost"] == pytest.approx(2 * HIGH_LANDSCAPE[model])
    assert usage["cost_estimated"] is (model == "chatgpt-image-latest")  # no price of its own: an estimate


@pytest.mark.parametrize("model", NEW_MODELS)
def test_native_output_format_is_passed_through_not_reencoded(
    gpt: RunningGateway, fake_openai: FakeOpenAI, model: str
) -> None:
    result = gpt.client().images.generate(
        model=model, prompt="p", output_format="jpeg", output_compression=40, response_format="b64_json"
    )
    (made,) = fake_openai.served
    assert detect_mime(made) == "image/jpeg"
    assert JPEG_COMMENT in made
    assert decoded(result) == made  # the upstream's own JPEG bytes (its comment too), not a conversion
    assert fake_openai.requests[0].json["output_compression"] == 40


@pytest.mark.parametrize("model", ["gpt-image-1.5", "chatgpt-image-latest"])
def test_edit_is_multipart_with_images_mask_and_input_fidelity(
    gpt: RunningGateway, fake_openai: FakeOpenAI, model: str
) -> None:
    result = gpt.client().images.edit(
        model=model,
        prompt="add a hat",
        image=[INPUT, INPUT],
        mask=MASK,
        input_fidelity="high",
        quality="low",
        background="transparent",
        output_format="webp",
        output_compression=70,
        size="1024x1024",
        response_format="b64_json",
    )
    recorded = fake_openai.requests[-1]
    assert recorded.path == "/v1/images/edits" and recorded.form is not None
    assert {k: v for k, v in recorded.form.items() if k != "prompt"} == {
        "model": model,
        "n": "1",
        "size": "1024x1024",
        "quality": "low",
        "background": "transparent",
        "input_fidelity": "high",
        "output_format": "webp",
        "output_compression": "70",
    }
    assert [f.field_name for f in recorded.files or []] == ["image[]", "image[]", "mask"]
    assert (recorded.files or [])[2].data == MASK[1]
    assert detect_mime(decoded(result)) == "image/webp" and decoded(result) == fake_openai.served[-1]
    # The multipart edit endpoint takes no moderation (spec 1.2): never sent, said so.
    edited = gpt.client().images.edit(
        model=model, prompt="p", image=INPUT, response_format="b64_json", extra_body={"moderation": "low"}
    )
    assert "moderation" not in (fake_openai.requests[-1].form or {})
    assert {"param": "moderation", "requested": "low", "applied": f"not applied (model {model} lacks it)"} in extras(
        edited, "adjustments"
    )


@pytest.mark.parametrize("model", ["gpt-image-1-mini", "gpt-image-2"])
def test_input_fidelity_is_not_applied_where_the_model_lacks_it(
    gpt: RunningGateway, fake_openai: FakeOpenAI, model: str
) -> None:
    result = gpt.client().images.edit(
        model=model, prompt="p", image=INPUT, input_fidelity="high", response_format="b64_json"
    )
    assert "input_fidelity" not in (fake_openai.requests[-1].form or {})  # the fake would answer 400
    assert {
        "param": "input_fidelity",
        "requested": "high",
        "applied": f"not applied (model {model} lacks it)",
    } in extras(result, "adjustments")


@pytest.mark.parametrize(
    ("size", "sent"),
    [
        ("3840x2160", "3840x2160"),  # the largest
        ("2000x1000", "2016x1008"),  # sides rounded to multiples of 16, keeping 2:1
        ("4000x1000", "3456x1152"),  # 4:1 brought to 3:1 (area kept)
        ("512x512", "816x816"),  # below 655,360 pixels: scaled up
    ],
)
def test_gpt_image_2_takes_flexible_sizes_within_its_rules(
    gpt: RunningGateway, fake_openai: FakeOpenAI, size: str, sent: str
) -> None:
    result = gpt.client().images.generate(
        model="gpt-image-2",
        prompt="p",
        size=size,  # type: ignore[arg-type]
        response_format="b64_json",
    )
    assert fake_openai.requests[-1].json["size"] == sent
    width, height = (int(side) for side in sent.split("x"))
    assert image_size(decoded(result)) == (width, height)
    assert (extras(result, "adjustments") == []) is (size == sent)


def test_gpt_image_2_tiers_and_ratios_become_wxh(gpt: RunningGateway, fake_openai: FakeOpenAI) -> None:
    client = gpt.client()
    largest = client.images.generate(
        model="gpt-image-2",
        prompt="p",
        response_format="b64_json",
        extra_body={"aspect_ratio": "16:9", "resolution": "4K"},
    )
    assert fake_openai.requests[-1].json["size"] == "3840x2160"
    # Tiers count pixels: 3840x2160 (8.3 MP) is the 3K tier, and the answer says so.
    assert extras(largest, "adjustments") == [{"param": "resolution", "requested": "4K", "applied": "3K"}]
    assert not {"aspect_ratio", "resolution", "seed"} & set(fake_openai.requests[-1].json)
    client.images.generate(model="gpt-image-2", prompt="p", response_format="b64_json", extra_body={"resolution": "2K"})
    assert fake_openai.requests[-1].json["size"] == "2048x2048"


def test_gpt_image_2_refuses_a_transparent_background_before_any_call(
    gpt: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        gpt.client().images.generate(model="gpt-image-2", prompt="p", background="transparent")
    body = excinfo.value.body
    assert isinstance(body, dict) and body["param"] == "background"
    assert fake_openai.requests == []


def test_cost_without_quality_or_at_an_unlisted_size_is_an_upper_bound_estimate(
    gpt: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    client = gpt.client()
    auto = client.images.generate(model="gpt-image-1.5", prompt="p", response_format="b64_json")
    assert "quality" not in fake_openai.requests[-1].json
    assert auto.usage is not None
    assert auto.usage.model_dump()["cost"] == pytest.approx(0.133)  # high at 1024x1024: the model chooses
    assert auto.usage.model_dump()["cost_estimated"] is True
    listed = client.images.generate(
        model="gpt-image-2", prompt="p", quality="low", size="2048x2048", response_format="b64_json"
    )
    assert listed.usage is not None
    assert listed.usage.model_dump()["cost"] == pytest.approx(0.0119)
    assert listed.usage.model_dump()["cost_estimated"] is False


def test_models_list_the_gpt_image_models_with_sizes_and_prices(gpt: RunningGateway) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{gpt.url}/v1/models", headers=AUTH).json()["data"]}
    for model in FIXED_SIZE_MODELS:
        card = cards[model]
        assert {(s["width"], s["height"]) for s in card["sizes"]} == {(1024, 1024), (1536, 1024), (1024, 1536)}
        assert card["available"] is True and [p["id"] for p in card["providers"]] == ["openai"]
        (binding,) = card["providers"]
        assert binding["upstream_model"] == model
        assert binding["price"]["by_quality_size"]["high"]["1536x1024"] == HIGH_LANDSCAPE[model]
    flexible = cards["gpt-image-2"]
    assert flexible["sizes"] is None
    assert flexible["pixel_limits"] == {
        "min_side": 16,
        "max_side": 3840,
        "max_pixels": 8294400,
        "min_pixels": 655360,
        "multiple_of": 16,
        "max_aspect_ratio": 3.0,
    }
    assert flexible["resolution_tiers"] == ["1K", "2K", "3K"]
    assert flexible["parameters"]["background"]["values"] == ["opaque", "auto"]
    price = flexible["providers"][0]["price"]
    assert price["by_quality_size"]["high"]["1024x1024"] == 0.211 and price["estimated"] is False
    assert cards["gpt-image-1-mini"]["parameters"]["input_fidelity"]["edit"] == "not_available"
    assert cards["gpt-image-1.5"]["parameters"]["input_fidelity"]["edit"] == "supported"
