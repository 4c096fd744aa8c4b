"""Contract tests of the OpenAI-compatible adapter against the fake Images upstream (real HTTP).

The adapter is called directly with a `ProviderRequest` for gemini-3-pro-image-preview served
through its `openai` binding (an OpenAI-compatible upstream). Spec: providers.md section 1.

What every provider shares (auth, rate limits, 5xx, rejected input, policy blocks, garbled answers,
size cap, timeouts and cancels, trailing slash, no mutation, seed/layout/images where the plan says)
is in test_contract.py; this file keeps what is specific to this upstream.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from openai._qs import Querystring

from imagegate.catalog import load_builtin_catalog
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    InvalidRequest,
    NoImageGenerated,
    UpstreamBadResponse,
    UpstreamError,
)
from imagegate.normalize import Layout, resolve_layout
from imagegate.providers import OpenAIProvider, ProviderRequest
from imagegate.providers.openai import _form_pairs
from tests.fakes.images import color_for, detect_mime, image_size, pixel_at, solid_jpeg
from tests.fakes.openai_upstream import (
    INPUT_TOKENS_PER_IMAGE,
    OUTPUT_TOKENS_PER_IMAGE,
    FakeOpenAI,
    OpenAIError,
    RawResponse,
)

from .inputs import JPEG, MASK, PNG

MODEL = load_builtin_catalog().get("gemini-3-pro-image-preview")
assert MODEL is not None
BINDING = MODEL.providers["openai"]
# A binding that leaves response_format to the upstream, so a test can ask the fake for URLs.
URL_BINDING = BINDING.model_copy(
    update={"parameters": {k: v for k, v in BINDING.parameters.items() if k != "response_format"}}
)


def make_request(
    prompt: str = "a red fox in snow", *, layout: Layout | None = None, mode: str | None = None, **kwargs: Any
) -> ProviderRequest:
    if mode is None:
        mode = "edit" if kwargs.get("images") else "t2i"
    kwargs.setdefault("binding", BINDING)
    return ProviderRequest(mode=mode, prompt=prompt, layout=layout or resolve_layout(MODEL), **kwargs)


# Every multipart edit currently fails before it leaves the process (see the reason).


def sdk_form_items(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """How openai-python serializes non-file multipart fields (array_format="brackets")."""
    return Querystring(array_format="brackets").stringify_items(fields)


@pytest.fixture
def provider(fake_openai: FakeOpenAI, http: httpx.AsyncClient) -> OpenAIProvider:
    return OpenAIProvider(api_key=fake_openai.api_key, base_url=fake_openai.base_url, client=http)


async def raised(provider: OpenAIProvider, request: ProviderRequest | None = None) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request or make_request())
    return info.value


# --- generations (JSON) -------------------------------------------------------------------------


async def test_generations_json_body(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    layout = resolve_layout(MODEL, aspect_ratio="16:9", resolution="2K")
    result = await provider.run(make_request("a calm lake", layout=layout, n=2, seed=11))
    recorded = fake_openai.requests[0]
    assert recorded.path == "/v1/images/generations"
    assert recorded.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert recorded.headers["content-type"].startswith("application/json")
    assert recorded.json == {
        "model": BINDING.upstream_model,
        "prompt": "a calm lake",
        "n": 2,
        "size": f"{layout.width}x{layout.height}",
        "aspect_ratio": "16:9",
        "resolution": "2K",
        "response_format": "b64_json",
        "seed": 11,
    }
    assert recorded.json["size"] == "2731x1536"
    assert len(result.images) == 2
    assert [image_size(i.data) for i in result.images] == [(2731, 1536)] * 2


async def test_no_seed_no_output_format_by_default(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    await provider.run(make_request(output_compression=50))
    body = fake_openai.requests[0].json
    assert "seed" not in body
    assert "output_format" not in body
    assert "output_compression" not in body  # only meaningful with a native output_format
    assert body["size"] == "1024x1024" and body["aspect_ratio"] == "1:1" and body["resolution"] == "1K"


async def test_seed_zero_is_sent(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    await provider.run(make_request(seed=0))
    assert fake_openai.requests[0].json["seed"] == 0


@pytest.mark.parametrize(("fmt", "mime"), [("jpeg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")])
async def test_output_format_when_set(provider: OpenAIProvider, fake_openai: FakeOpenAI, fmt: str, mime: str) -> None:
    result = await provider.run(make_request(output_format=fmt, output_compression=80))
    body = fake_openai.requests[0].json
    assert body["output_format"] == fmt
    assert body["output_compression"] == 80
    assert result.images[0].mime_type == mime
    assert detect_mime(result.images[0].data) == mime


async def test_options_and_extra_are_top_level_fields(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    options = {"enable_web_search": True, "safety_tolerance": "2", "limit_generations": False}
    extra = {"quality": "high", "custom": {"a": 1, "b": [1, 2]}}
    await provider.run(make_request(options=options, extra=extra))
    body = fake_openai.requests[0].json
    for key, value in (options | extra).items():
        assert body[key] == value


@pytest.mark.parametrize(
    "extra",
    [
        {"size": "1024x1536"},
        {"model": "other-model"},
        {"prompt": "another"},
        {"n": 4},
        {"response_format": "url"},
        {"image[]": "https://example.com/a.png"},
        {"image": {"x": "y"}},
    ],
)
@pytest.mark.parametrize("images", [(), (PNG,)])
async def test_extra_cannot_replace_gateway_fields(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, extra: dict[str, Any], images: tuple[Any, ...]
) -> None:
    err = await raised(provider, make_request(extra=extra, images=images))
    assert isinstance(err, InvalidRequest) and err.status_code == 400
    assert err.param == next(iter(extra)) and err.code == "reserved_upstream_field"
    assert fake_openai.requests == []


# The binding's sent parameters and where they must appear in the JSON body.
_LAYOUT = resolve_layout(MODEL, aspect_ratio="21:9", resolution="2K")
JSON_DRIFT_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "prompt": ({"prompt": "drift"}, "drift"),
    "size": ({"layout": _LAYOUT}, f"{_LAYOUT.width}x{_LAYOUT.height}"),
    "aspect_ratio": ({"layout": _LAYOUT}, "21:9"),
    "resolution": ({"layout": _LAYOUT}, "2K"),
    "seed": ({"seed": 31337}, 31337),
    "n": ({"n": 3}, 3),
    "output_format": ({"output_format": "webp"}, "webp"),
    "output_compression": ({"output_format": "webp", "output_compression": 42}, 42),
}


@pytest.mark.parametrize("param", sorted(JSON_DRIFT_CASES))
async def test_binding_target_names_in_json(provider: OpenAIProvider, fake_openai: FakeOpenAI, param: str) -> None:
    handling = BINDING.handling(param)
    assert handling is not None and handling.handling in ("passthrough", "renamed", "converted")
    arguments, expected = JSON_DRIFT_CASES[param]
    await provider.run(make_request(**arguments))
    assert fake_openai.requests[0].json[handling.to or param] == expected


# --- edits (multipart) ------------------------------------------------------------------------


async def test_edits_multipart(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    layout = resolve_layout(MODEL, aspect_ratio="4:3")
    request = make_request(
        "add a hat",
        layout=layout,
        images=(PNG, JPEG),
        mask=MASK,
        seed=5,
        options={"enable_web_search": True, "limit_generations": False},
    )
    result = await provider.run(request)
    recorded = fake_openai.requests[0]
    assert recorded.path == "/v1/images/edits"
    assert recorded.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert recorded.headers["content-type"].startswith("multipart/form-data")
    assert recorded.files is not None
    assert [tuple(part) for part in recorded.files] == [
        ("image[]", "image-0.png", "image/png", PNG.data),
        ("image[]", "image-1.jpg", "image/jpeg", JPEG.data),
        ("mask", "mask.png", "image/png", MASK.data),
    ]
    assert recorded.form == {
        "model": BINDING.upstream_model,
        "prompt": "add a hat",
        "n": "1",
        "size": f"{layout.width}x{layout.height}",
        "aspect_ratio": "4:3",
        "resolution": "1K",
        "response_format": "b64_json",
        "seed": "5",
        "enable_web_search": "true",
        "limit_generations": "false",
    }
    assert image_size(result.images[0].data) == (layout.width, layout.height)
    assert result.input_tokens == len("add a hat".split()) + 2 * INPUT_TOKENS_PER_IMAGE


async def test_edits_without_mask(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    await provider.run(make_request("x", images=(JPEG,)))
    files = fake_openai.requests[0].files
    assert files is not None
    assert [(p.field_name, p.content_type) for p in files] == [("image[]", "image/jpeg")]


async def test_edits_flatten_nested_extra_like_the_sdk(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    extra = {
        "image_config": {"aspect_ratio": "16:9", "nested": {"deep": 1}},
        "tags": ["a", "b"],
        "flag": False,
        "ratio": 0.5,
    }
    request = make_request("flatten", images=(PNG,), output_format="jpeg", output_compression=70, extra=extra)
    await provider.run(request)
    items = fake_openai.requests[0].form_items
    assert items is not None
    for pair in [
        ("image_config[aspect_ratio]", "16:9"),
        ("image_config[nested][deep]", "1"),
        ("flag", "false"),
        ("ratio", "0.5"),
        ("output_format", "jpeg"),
        ("output_compression", "70"),
    ]:
        assert pair in items
    assert [v for k, v in items if k == "tags[]"] == ["a", "b"]
    assert "image_config" not in dict(items) and "tags" not in dict(items)
    # The whole extra part serializes exactly as openai-python's extra_body would.
    extra_keys = ("image_config[", "tags[]", "flag", "ratio")
    assert [(k, v) for k, v in items if k.startswith(extra_keys)] == sdk_form_items(extra)


FORM_VALUES: dict[str, Any] = {
    "n": 2,
    "flag": True,
    "off": False,
    "ratio": 0.25,
    "text": "a b&c=d",
    "image_config": {"aspect_ratio": "16:9", "nested": {"deep": [1, {"x": "y"}]}},
    "tags": ["a", "b"],
}


def test_form_flattening_matches_the_sdk() -> None:
    """Unit level, independent of the transport: _form_pairs == openai-python's stringify_items."""
    pairs = [pair for key, value in FORM_VALUES.items() for pair in _form_pairs(key, value)]
    assert pairs == sdk_form_items(FORM_VALUES)


def test_form_flattening_omits_none_like_the_sdk() -> None:
    extra = {"image_config": {"aspect_ratio": "16:9", "person_generation": None}}
    pairs = _form_pairs("image_config", extra["image_config"])
    assert pairs == sdk_form_items(extra) == [("image_config[aspect_ratio]", "16:9")]


# --- responses --------------------------------------------------------------------------------


async def test_b64_response_decoded(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    result = await provider.run(make_request("a green frog", n=2))
    assert [i.mime_type for i in result.images] == ["image/png", "image/png"]
    assert [pixel_at(i.data)[:3] for i in result.images] == [color_for("a green frog"), color_for("a green frog#1")]
    assert result.text == "a green frog"  # revised_prompt
    assert result.input_tokens == 3
    assert result.output_tokens == 2 * OUTPUT_TOKENS_PER_IMAGE
    assert fake_openai.downloads == []


async def test_url_response_downloaded(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    result = await provider.run(make_request("by url", n=2, extra={"response_format": "url"}, binding=URL_BINDING))
    assert fake_openai.requests[0].json["response_format"] == "url"
    assert len(fake_openai.downloads) == 2
    assert [i.mime_type for i in result.images] == ["image/png", "image/png"]
    assert [pixel_at(i.data)[:3] for i in result.images] == [color_for("by url"), color_for("by url#1")]
    assert result.text == "by url"


async def test_url_response_mime_from_downloaded_bytes(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    result = await provider.run(
        make_request("webp by url", output_format="webp", extra={"response_format": "url"}, binding=URL_BINDING)
    )
    assert len(fake_openai.downloads) == 1
    assert result.images[0].mime_type == "image/webp"
    assert detect_mime(result.images[0].data) == "image/webp"


async def test_url_response_on_edit(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    result = await provider.run(
        make_request("edit by url", images=(PNG,), extra={"response_format": "url"}, binding=URL_BINDING)
    )
    assert len(fake_openai.downloads) == 1
    assert detect_mime(result.images[0].data) == "image/png"


async def test_url_download_failure(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    body = '{"created": 1, "data": [{"url": "%s/files/missing.png"}]}' % fake_openai.url
    fake_openai.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert isinstance(err, UpstreamError)
    assert err.status_code == 502


async def test_mime_sniffed_from_bytes(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    """The upstream said png, it sent a jpeg: the bytes win."""
    data = base64.b64encode(solid_jpeg(16, 16)).decode()
    body = '{"created": 1, "output_format": "png", "data": [{"b64_json": "%s"}]}' % data
    fake_openai.enqueue(RawResponse(200, body, content_type="application/json"))
    result = await provider.run(make_request())
    assert result.images[0].mime_type == "image/jpeg"
    assert result.text is None
    assert result.input_tokens == result.output_tokens == 0


# --- errors -----------------------------------------------------------------------------------


# moderation_blocked is in test_contract.py (test_content_policy_is_a_violation[openai]).
@pytest.mark.parametrize("code", ["content_policy_violation"])
async def test_moderation_is_content_policy(provider: OpenAIProvider, fake_openai: FakeOpenAI, code: str) -> None:
    fake_openai.enqueue(
        OpenAIError(
            400, "Your request was rejected by the safety system.", type="image_generation_user_error", code=code
        )
    )
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation)
    assert err.status_code == 400
    assert err.code == "content_policy_violation"
    assert "safety system" in err.message


async def test_moderation_on_edit(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(OpenAIError(400, "blocked", code="moderation_blocked"))
    err = await raised(provider, make_request(images=(PNG,)))
    assert isinstance(err, ContentPolicyViolation)


async def test_upstream_validation_error_is_400(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.strict_params = True  # aspect_ratio/resolution are unknown to a strict upstream
    err = await raised(provider)
    assert isinstance(err, InvalidRequest)
    assert err.status_code == 400
    assert err.code == "upstream_rejected_request"
    assert "Unknown parameter" in err.message


@pytest.mark.parametrize("body", ['{"created": 1, "data": []}', '{"created": 1}', "[]"])
async def test_no_images_is_no_image_generated(provider: OpenAIProvider, fake_openai: FakeOpenAI, body: str) -> None:
    fake_openai.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert type(err) is NoImageGenerated
    assert err.status_code == 502
    assert err.code == "no_image_generated"


@pytest.mark.parametrize(
    "body",
    [
        '{"created": 1, "data": [{"b64_json": "aGVsbG8="}]}',  # valid base64 of "hello": not an image
        '{"created": 1, "data": [{"revised_prompt": "x"}]}',
        '{"created": 1, "data": ["oops"]}',
    ],
    ids=["not-an-image", "neither-b64-nor-url", "entry-not-object"],
)
async def test_bad_entries_are_bad_response(provider: OpenAIProvider, fake_openai: FakeOpenAI, body: str) -> None:
    fake_openai.enqueue(RawResponse(200, body, content_type="application/json"))
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse
    assert err.code == "upstream_bad_response"
