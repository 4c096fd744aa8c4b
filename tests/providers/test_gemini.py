"""Contract tests of the Gemini adapter against the fake generateContent upstream (real HTTP).

The adapter is called directly: a `ProviderRequest` built from the catalog binding and a layout
from `resolve_layout`, no gateway server. Spec: the provider wire-format reference (the spec), section 2.

What every provider shares (auth, rate limits, 5xx, rejected input, policy blocks, garbled answers,
size cap, timeouts and cancels, trailing slash, no mutation, seed/layout/images where the plan says)
is in test_contract.py; this file keeps what is specific to this upstream.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from imagegate.catalog import load_builtin_catalog
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    InvalidRequest,
    NoImageGenerated,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.normalize import Layout, resolve_layout
from imagegate.providers import GeminiProvider, ProviderRequest, ProviderResult
from tests.fakes.gemini import (
    PRO_SIZES,
    THOUGHT_COLOR,
    FakeGemini,
    FinishBlocked,
    GeminiError,
    PromptBlocked,
    RawResponse,
    TextOnly,
)
from tests.fakes.images import color_for, detect_mime, image_size, pixel_at

from .cases import lookup
from .inputs import JPEG, MASK, PNG, WEBP

MODEL = load_builtin_catalog().get("gemini-3-pro-image-preview")
assert MODEL is not None
BINDING = MODEL.providers["gemini"]
# The binding calls the GA id: Google retired the preview id on the Gemini API (2026-06-25).
PATH = "/v1beta/models/gemini-3-pro-image:generateContent"
HARM_CATEGORIES = {
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_request(
    prompt: str = "a red fox in snow", *, layout: Layout | None = None, mode: str | None = None, **kwargs: Any
) -> ProviderRequest:
    if mode is None:
        mode = "edit" if kwargs.get("images") else "t2i"
    return ProviderRequest(mode=mode, prompt=prompt, layout=layout or resolve_layout(MODEL), binding=BINDING, **kwargs)


@pytest.fixture
def provider(fake_gemini: FakeGemini, http: httpx.AsyncClient) -> GeminiProvider:
    return GeminiProvider(api_key=fake_gemini.api_key, base_url=fake_gemini.base_url, client=http)


async def sent_body(provider: GeminiProvider, fake: FakeGemini, request: ProviderRequest) -> dict[str, Any]:
    """Run the request through the fake (which validates it like the real API) and return the body."""
    result = await provider.run(request)
    assert isinstance(result, ProviderResult)
    assert len(fake.requests) == 1
    body = fake.requests[0].json
    assert isinstance(body, dict)
    return body


async def raised(provider: GeminiProvider, request: ProviderRequest | None = None) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request or make_request())
    return info.value


# --- request wire format --------------------------------------------------------------------


async def test_url_header_and_prompt(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = await sent_body(provider, fake_gemini, make_request("a lighthouse at dusk"))
    recorded = fake_gemini.requests[0]
    assert recorded.method == "POST"
    assert recorded.path == PATH
    assert recorded.model == "gemini-3-pro-image"
    assert recorded.headers["x-goog-api-key"] == fake_gemini.api_key
    assert "key" not in recorded.query  # the key travels in the header, not the URL
    assert recorded.headers["content-type"].startswith("application/json")
    assert body["contents"][0]["role"] == "user"
    assert body["contents"][0]["parts"][0] == {"text": "a lighthouse at dusk"}
    assert len(body["contents"][0]["parts"]) == 1
    assert body["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]


@pytest.mark.parametrize(
    ("layout_args", "ratio", "tier"),
    [
        ({}, "1:1", "1K"),
        ({"aspect_ratio": "16:9", "resolution": "2K"}, "16:9", "2K"),
        ({"aspect_ratio": "21:9", "resolution": "4K"}, "21:9", "4K"),
        ({"aspect_ratio": "9:16"}, "9:16", "1K"),
        ({"aspect_ratio": "4:5", "resolution": "4K"}, "4:5", "4K"),
        ({"size": "2508x1672"}, "3:2", "2K"),
    ],
    ids=["default", "16:9-2K", "21:9-4K", "9:16", "4:5-4K", "size-WxH"],
)
async def test_image_config_from_layout(
    provider: GeminiProvider, fake_gemini: FakeGemini, layout_args: dict[str, str], ratio: str, tier: str
) -> None:
    layout = resolve_layout(MODEL, **layout_args)
    assert (layout.aspect_ratio, layout.resolution) == (ratio, tier)
    result = await provider.run(make_request(layout=layout))
    body = fake_gemini.requests[0].json
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": ratio, "imageSize": tier}
    # The fake answers with the real Pro pixel size for that config: the catalog's table agrees.
    assert image_size(result.images[0].data) == (layout.width, layout.height) == PRO_SIZES[(ratio, tier)]


async def test_no_seed_no_seed_field(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = await sent_body(provider, fake_gemini, make_request())
    assert "seed" not in body["generationConfig"]
    assert "tools" not in body and "safetySettings" not in body


async def test_input_images_become_inline_data_parts(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = await sent_body(provider, fake_gemini, make_request("combine", images=(PNG, JPEG, WEBP)))
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": "combine"}
    assert parts[1:] == [
        {"inline_data": {"mime_type": "image/png", "data": b64(PNG.data)}},
        {"inline_data": {"mime_type": "image/jpeg", "data": b64(JPEG.data)}},
        {"inline_data": {"mime_type": "image/webp", "data": b64(WEBP.data)}},
    ]


async def test_edit_without_aspect_ratio_still_sends_layout(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    layout = resolve_layout(MODEL, input_shape=(PNG.width, PNG.height))  # 64x48 -> 4:3
    body = await sent_body(provider, fake_gemini, make_request(images=(PNG,), layout=layout))
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"}


async def test_mask_is_a_text_part_plus_an_extra_image(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = await sent_body(provider, fake_gemini, make_request("paint a hat", images=(PNG,), mask=MASK))
    parts = body["contents"][0]["parts"]
    assert len(parts) == 4
    assert parts[0] == {"text": "paint a hat"}
    assert parts[1] == {"inline_data": {"mime_type": "image/png", "data": b64(PNG.data)}}
    assert set(parts[2]) == {"text"} and "mask" in parts[2]["text"].lower()
    assert parts[3] == {"inline_data": {"mime_type": "image/png", "data": b64(MASK.data)}}


async def test_web_search_adds_google_search_tool(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = await sent_body(provider, fake_gemini, make_request(options={"enable_web_search": True}))
    assert body["tools"] == [{"google_search": {}}]


async def test_web_search_false_adds_no_tool(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = await sent_body(provider, fake_gemini, make_request(options={"enable_web_search": False}))
    assert "tools" not in body


def _thresholds(body: dict[str, Any]) -> dict[str, str]:
    settings = body["safetySettings"]
    assert len(settings) == 4
    out = {s["category"]: s["threshold"] for s in settings}
    assert set(out) == HARM_CATEGORIES
    return out


@pytest.mark.parametrize("level", ["block_low_and_above", "block_medium_and_above", "block_only_high"])
async def test_safety_filter_level_sets_all_categories(
    provider: GeminiProvider, fake_gemini: FakeGemini, level: str
) -> None:
    body = await sent_body(provider, fake_gemini, make_request(options={"safety_filter_level": level}))
    assert set(_thresholds(body).values()) == {level.upper()}


@pytest.mark.parametrize(
    ("tolerance", "threshold"),
    [
        ("1", "BLOCK_LOW_AND_ABOVE"),
        ("2", "BLOCK_LOW_AND_ABOVE"),
        ("3", "BLOCK_MEDIUM_AND_ABOVE"),
        ("4", "BLOCK_MEDIUM_AND_ABOVE"),
        ("5", "BLOCK_ONLY_HIGH"),
        ("6", "BLOCK_ONLY_HIGH"),
    ],
)
async def test_safety_tolerance_thresholds(
    provider: GeminiProvider, fake_gemini: FakeGemini, tolerance: str, threshold: str
) -> None:
    body = await sent_body(provider, fake_gemini, make_request(options={"safety_tolerance": tolerance}))
    assert set(_thresholds(body).values()) == {threshold}


async def test_safety_filter_level_wins_over_tolerance(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    options = {"safety_tolerance": "1", "safety_filter_level": "block_only_high"}
    body = await sent_body(provider, fake_gemini, make_request(options=options))
    assert set(_thresholds(body).values()) == {"BLOCK_ONLY_HIGH"}


async def test_emulated_options_are_not_sent(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    """limit_generations is the gateway's business: nothing of it reaches Google."""
    body = await sent_body(provider, fake_gemini, make_request(options={"limit_generations": True}))
    assert "limit_generations" not in repr(body)
    assert set(body) == {"contents", "generationConfig"}


async def test_extra_is_deep_merged(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    layout = resolve_layout(MODEL, aspect_ratio="16:9", resolution="2K")
    extra = {"generationConfig": {"temperature": 0.3}, "systemInstruction": {"parts": [{"text": "be brief"}]}}
    body = await sent_body(provider, fake_gemini, make_request(layout=layout, seed=5, extra=extra))
    config = body["generationConfig"]
    assert config["temperature"] == 0.3
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert config["seed"] == 5
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"generationConfig": {"imageConfig": {"imageSize": "4K"}}}, "generationConfig"),
        ({"generationConfig": {"imageConfig": {"personGeneration": "ALLOW_ALL"}}}, "generationConfig"),
        ({"generationConfig": {"responseModalities": ["IMAGE"]}}, "generationConfig"),
        ({"generationConfig": {"seed": 7}}, "generationConfig"),
        ({"generationConfig": "plain text"}, "generationConfig"),
        ({"contents": [{"role": "user", "parts": [{"text": "another prompt"}]}]}, "contents"),
        ({"safetySettings": []}, "safetySettings"),  # reserved by the binding even when not built
        ({"tools": [{"code_execution": {}}]}, "tools"),
        # proto-JSON: snake_case names the same fields, at any level
        ({"generation_config": {"image_config": {"image_size": "4K"}}}, "generation_config"),
        ({"generationConfig": {"image_config": {"imageSize": "4K"}}}, "generationConfig"),
        ({"generation_config": {"response_modalities": ["IMAGE"]}}, "generation_config"),
        ({"safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]}, "safety_settings"),
    ],
)
async def test_extra_cannot_replace_gateway_fields(
    provider: GeminiProvider, fake_gemini: FakeGemini, extra: dict[str, Any], param: str
) -> None:
    err = await raised(provider, make_request(extra=extra))
    assert isinstance(err, InvalidRequest) and err.status_code == 400
    assert err.param == param and err.code == "reserved_upstream_field"
    assert fake_gemini.requests == []


async def test_snake_case_extra_merges_into_the_built_dict(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    """A new key inside a gateway-built dict is an addition, whichever proto-JSON spelling it uses;
    it lands in the gateway's own dict rather than in a second, conflicting copy of it."""
    body = await sent_body(provider, fake_gemini, make_request(extra={"generation_config": {"temperature": 0.5}}))
    assert "generation_config" not in body
    assert body["generationConfig"]["temperature"] == 0.5
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "1K"}


# --- catalog <-> adapter drift ----------------------------------------------------------------


_LAYOUT = resolve_layout(MODEL, aspect_ratio="21:9", resolution="2K")


def _all_thresholds(threshold: str) -> Callable[[list[Any]], bool]:
    return lambda values: (
        len(values) == 1
        and len(values[0]) == 4
        and {s["threshold"] for s in values[0]} == {threshold}
        and {s["category"] for s in values[0]} == HARM_CATEGORIES
    )


# param -> (ProviderRequest arguments that use it, check of the values found at `to`)
DRIFT_CASES: dict[str, tuple[dict[str, Any], Callable[[list[Any]], bool]]] = {
    "prompt": ({"prompt": "drift check"}, lambda v: v == ["drift check"]),
    "image": (
        {"images": (PNG, JPEG)},
        lambda v: (
            v
            == [{"mime_type": "image/png", "data": b64(PNG.data)}, {"mime_type": "image/jpeg", "data": b64(JPEG.data)}]
        ),
    ),
    "size": (
        {"layout": resolve_layout(MODEL, size="3129x1341")},
        lambda v: v == [{"aspectRatio": "21:9", "imageSize": "2K"}],
    ),
    "aspect_ratio": ({"layout": _LAYOUT}, lambda v: v == ["21:9"]),
    "resolution": ({"layout": _LAYOUT}, lambda v: v == ["2K"]),
    "seed": ({"seed": 987}, lambda v: v == [987]),
    "enable_web_search": ({"options": {"enable_web_search": True}}, lambda v: v == [[{"google_search": {}}]]),
    "safety_filter_level": (
        {"options": {"safety_filter_level": "block_medium_and_above"}},
        _all_thresholds("BLOCK_MEDIUM_AND_ABOVE"),
    ),
    "safety_tolerance": ({"options": {"safety_tolerance": "5"}}, _all_thresholds("BLOCK_ONLY_HIGH")),
}
SENT_PARAMS = [name for name, h in BINDING.parameters.items() if h.handling in ("renamed", "converted")]


def test_binding_declares_sent_params() -> None:
    assert {"prompt", "seed", "aspect_ratio", "resolution", "enable_web_search"} <= set(SENT_PARAMS)
    for name in SENT_PARAMS:
        handling = BINDING.parameters[name]
        assert handling.to, f"{name} is {handling.handling} but declares no `to` path"
        assert name in DRIFT_CASES, f"binding sends {name!r} to {handling.to!r}: add a drift case for it"


@pytest.mark.parametrize("param", SENT_PARAMS)
async def test_declared_target_path_is_in_the_body(
    provider: GeminiProvider, fake_gemini: FakeGemini, param: str
) -> None:
    handling = BINDING.parameters[param]
    if param not in DRIFT_CASES:
        pytest.fail(f"no drift case for {param!r} (declared {handling.handling} to {handling.to!r})")
    arguments, check = DRIFT_CASES[param]
    body = await sent_body(provider, fake_gemini, make_request(**arguments))
    assert handling.to is not None
    values = lookup(body, handling.to)
    assert values, f"{param}: nothing at declared path {handling.to!r} in {sorted(body)}"
    assert check(values), f"{param}: unexpected value(s) at {handling.to!r}: {values!r}"


@pytest.mark.parametrize(
    "param", [n for n, h in BINDING.parameters.items() if h.handling in ("emulated", "not_available")]
)
def test_emulated_params_declare_no_target(param: str) -> None:
    assert BINDING.parameters[param].to is None


def test_lookup_helper() -> None:
    body = {"a": [{"parts": [{"x": 1}, {"y": 2}, {"x": 3}]}], "b": {"c": 4}}
    assert lookup(body, "a[0].parts[].x") == [1, 3]
    assert lookup(body, "b.c") == [4]
    assert lookup(body, "a[1].parts") == []
    assert lookup(body, "b.d") == []


# --- responses --------------------------------------------------------------------------------


async def test_thought_image_is_skipped(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    result = await provider.run(make_request("an orange cat"))
    assert len(result.images) == 1
    image = result.images[0]
    assert image.mime_type == "image/png"
    assert image_size(image.data) == (1024, 1024)  # not the 8x8 thought image
    assert pixel_at(image.data)[:3] == color_for("an orange cat")
    assert pixel_at(image.data)[:3] != THOUGHT_COLOR


async def test_two_thought_images_are_skipped(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.thought_images = 2
    result = await provider.run(make_request("two thoughts", options={"limit_generations": False}))
    assert [image_size(i.data) for i in result.images] == [(1024, 1024)]


async def test_seed_reaches_the_model(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    result = await provider.run(make_request("seeded fox", seed=7))
    assert pixel_at(result.images[0].data)[:3] == color_for("seeded fox7")


async def test_text_and_usage(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    result = await provider.run(make_request("a blue bird"))
    assert result.text == "Here is your image: a blue bird"
    assert result.input_tokens == 17
    assert result.output_tokens == 1290


async def test_output_mime_jpeg(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.output_mime = "image/jpeg"
    result = await provider.run(make_request())
    assert result.images[0].mime_type == "image/jpeg"
    assert detect_mime(result.images[0].data) == "image/jpeg"


async def test_output_mime_webp(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.output_mime = "image/webp"
    result = await provider.run(make_request())
    assert result.images[0].mime_type == "image/webp"
    assert detect_mime(result.images[0].data) == "image/webp"


async def test_all_images_kept_when_limit_generations_false(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.images_per_response = 3
    result = await provider.run(make_request("three", options={"limit_generations": False}))
    assert len(result.images) == 3
    colors = [pixel_at(i.data)[:3] for i in result.images]
    assert colors == [color_for("three"), color_for("three#1"), color_for("three#2")]


@pytest.mark.parametrize("options", [{}, {"limit_generations": True}], ids=["default", "true"])
async def test_one_image_by_default(provider: GeminiProvider, fake_gemini: FakeGemini, options: dict[str, Any]) -> None:
    fake_gemini.images_per_response = 3
    result = await provider.run(make_request("three", options=options))
    assert len(result.images) == 1
    assert pixel_at(result.images[0].data)[:3] == color_for("three")


async def test_edit_mode_uses_the_same_endpoint(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    result = await provider.edit(make_request(images=(PNG,), layout=resolve_layout(MODEL, aspect_ratio="4:3")))
    assert fake_gemini.requests[0].path == PATH
    assert image_size(result.images[0].data) == PRO_SIZES[("4:3", "1K")]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "IMAGE_SAFETY"])
async def test_prompt_blocked_is_content_policy(provider: GeminiProvider, fake_gemini: FakeGemini, reason: str) -> None:
    fake_gemini.enqueue(PromptBlocked(reason, "blocked for a reason"))
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation)
    assert err.status_code == 400
    assert err.code == "content_policy_violation"
    assert reason in err.message


@pytest.mark.parametrize("reason", ["IMAGE_SAFETY", "SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT"])
async def test_finish_blocked_is_content_policy(provider: GeminiProvider, fake_gemini: FakeGemini, reason: str) -> None:
    fake_gemini.enqueue(FinishBlocked(reason))
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation)
    assert err.status_code == 400
    assert err.code == "content_policy_violation"
    assert reason in err.message


@pytest.mark.parametrize(
    "behaviour", [FinishBlocked("NO_IMAGE"), FinishBlocked("OTHER"), TextOnly()], ids=["NO_IMAGE", "OTHER", "TextOnly"]
)
async def test_no_image_is_upstream_error(provider: GeminiProvider, fake_gemini: FakeGemini, behaviour: Any) -> None:
    fake_gemini.enqueue(behaviour)
    err = await raised(provider)
    assert type(err) is NoImageGenerated
    assert err.status_code == 502
    assert err.code == "no_image_generated"


async def test_rate_limit_without_retry_info(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(GeminiError(429, "RESOURCE_EXHAUSTED", "quota"))
    err = await raised(provider)
    assert isinstance(err, UpstreamUnavailable)
    assert err.retry_after is None


async def test_deadline_exceeded_is_504(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(GeminiError(504, "DEADLINE_EXCEEDED", "Deadline exceeded"))
    err = await raised(provider)
    assert isinstance(err, UpstreamTimeout)
    assert err.status_code == 504


async def test_fake_validation_error_is_400(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    """A body the API itself rejects (here an unknown field via extra) surfaces as a 400."""
    err = await raised(provider, make_request(extra={"generationConfig": {"bogusField": 1}}))
    assert isinstance(err, InvalidRequest)
    assert err.code == "upstream_rejected_request"
    assert "bogusField" in err.message


async def test_unknown_model_is_502(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.known_models = {"some-other-model"}
    err = await raised(provider)
    assert type(err) is UpstreamError
    assert err.status_code == 502


@pytest.mark.parametrize("body", ["[]", '"text"', "{}", '{"candidates": []}'])
async def test_unexpected_json_shapes(provider: GeminiProvider, fake_gemini: FakeGemini, body: str) -> None:
    fake_gemini.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert isinstance(err, UpstreamError) and err.status_code == 502
    assert err.code in ("upstream_bad_response", "no_image_generated")


@pytest.mark.parametrize(
    "body",
    [
        '{"candidates": [{"content": {"parts": [{"inlineData": "abc"}]}, "finishReason": "STOP"}]}',
        '{"candidates": [{"content": "oops", "finishReason": "STOP"}]}',
        '{"promptFeedback": "blocked"}',
    ],
    ids=["inlineData-not-object", "content-not-object", "promptFeedback-not-object"],
)
async def test_malformed_structure_is_bad_response(
    provider: GeminiProvider, fake_gemini: FakeGemini, body: str
) -> None:
    fake_gemini.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert isinstance(err, UpstreamError)
    assert err.code == "upstream_bad_response"


async def test_invalid_base64_is_bad_response(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    body = '{"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "abc"}}]}}]}'
    fake_gemini.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert isinstance(err, UpstreamError)
    assert err.code == "upstream_bad_response"


@pytest.mark.parametrize("data", ["aGVsbG8=", "!!!!", ""], ids=["hello-bytes", "non-alphabet", "empty"])
async def test_non_image_data_is_bad_response(provider: GeminiProvider, fake_gemini: FakeGemini, data: str) -> None:
    body = (
        '{"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "%s"}}]},'
        ' "finishReason": "STOP"}]}' % data
    )
    fake_gemini.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert isinstance(err, UpstreamError)
    assert err.code == "upstream_bad_response"
