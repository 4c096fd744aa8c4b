"""Contract tests of the Replicate adapter against the fake predictions API (real HTTP).

The adapter is called directly: a `ProviderRequest` built from the catalog's "replicate" binding
and a layout from `resolve_layout`, no gateway server. Spec: the provider wire-format reference (the spec),
sections 3 and 5.

What every provider shares (auth, rate limits, 5xx, rejected input, policy blocks, garbled answers,
size cap, timeouts and cancels, trailing slash, no mutation, seed/layout/images where the plan says)
is in test_contract.py; this file keeps what is specific to this upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from imagegate.catalog import ModelEntry, ProviderBinding, load_builtin_catalog
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    InvalidRequest,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamUnavailable,
)
from imagegate.normalize import Layout, resolve_layout
from imagegate.providers import ProviderRequest, ProviderResult
from imagegate.providers.gemini import MASK_NOTE
from imagegate.providers.replicate import ReplicateProvider
from tests.fakes.gemini import PRO_SIZES
from tests.fakes.images import color_for, detect_mime, image_size, pixel_at
from tests.fakes.replicate import (
    CapacityFailure,
    FakeReplicate,
    OutputMissing,
    OutputNotImage,
    PollError,
    PredictionCanceled,
    PredictionFails,
    RawResponse,
)

from .cases import lookup
from .inputs import JPEG, MASK, PNG, data_uri

_model = load_builtin_catalog().get("gemini-3-pro-image-preview")
assert _model is not None
MODEL: ModelEntry = _model
BINDING = MODEL.providers["replicate"]
PATH = "/v1/models/google/nano-banana-pro/predictions"


def binding_with(**parameters: dict[str, Any]) -> ProviderBinding:
    """The replicate binding with some parameter handlings replaced (e.g. a seedream-like n)."""
    data = BINDING.model_dump(exclude_none=True)
    data["parameters"].update(parameters)
    return ProviderBinding.model_validate(data)


def make_request(
    prompt: str = "a red fox in snow", *, layout: Layout | None = None, mode: str | None = None, **kwargs: Any
) -> ProviderRequest:
    if mode is None:
        mode = "edit" if kwargs.get("images") else "t2i"
    kwargs.setdefault("binding", BINDING)
    return ProviderRequest(mode=mode, prompt=prompt, layout=layout or resolve_layout(MODEL), **kwargs)


@pytest.fixture
def provider(fake_replicate: FakeReplicate, http: httpx.AsyncClient) -> ReplicateProvider:
    provider = ReplicateProvider(api_key=fake_replicate.api_key, base_url=fake_replicate.base_url, client=http)
    provider.poll_interval = 0.01
    return provider


async def sent_input(provider: ReplicateProvider, fake: FakeReplicate, request: ProviderRequest) -> dict[str, Any]:
    """Run the request through the fake (which validates it like the real API); the `input` sent."""
    result = await provider.run(request)
    assert isinstance(result, ProviderResult)
    assert len(fake.creates) == 1
    body = fake.creates[0].json
    assert isinstance(body, dict) and set(body) == {"input"}
    return body["input"]  # type: ignore[no-any-return]


async def raised(provider: ReplicateProvider, request: ProviderRequest | None = None) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request or make_request())
    return info.value


# --- request wire format --------------------------------------------------------------------


def test_provider_identity() -> None:
    assert ReplicateProvider.provider_id == "replicate"
    assert ReplicateProvider.key_env_var == "REPLICATE_API_TOKEN"
    assert ReplicateProvider.base_url_env_var == "REPLICATE_BASE_URL"
    assert ReplicateProvider.default_base_url == "https://api.replicate.com"
    assert BINDING.upstream_model == "google/nano-banana-pro"


async def test_url_headers_and_input(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    sent = await sent_input(provider, fake_replicate, make_request("a lighthouse at dusk"))
    create = fake_replicate.creates[0]
    assert create.method == "POST" and create.path == PATH
    assert create.model == "google/nano-banana-pro"
    assert create.headers["authorization"] == f"Bearer {fake_replicate.api_key}"
    assert create.headers["content-type"].startswith("application/json")
    assert create.headers["prefer"] == "wait=60"
    assert create.headers["cancel-after"] == "300s"
    # Only what the binding sends: no output_format unless asked, no seed, no image_input.
    assert sent == {"prompt": "a lighthouse at dusk", "aspect_ratio": "1:1", "resolution": "1K"}


@pytest.mark.parametrize(
    ("timeout", "prefer", "cancel_after"),
    [(600, "wait=60", "600s"), (20.5, "wait=20", "21s"), (7.9, "wait=7", "8s"), (2.5, "wait=2", "5s")],
)
async def test_prefer_wait_and_cancel_after_follow_the_timeout(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, timeout: float, prefer: str, cancel_after: str
) -> None:
    provider.timeout = timeout
    await provider.run(make_request())
    headers = fake_replicate.creates[0].headers
    assert (headers["prefer"], headers["cancel-after"]) == (prefer, cancel_after)


@pytest.mark.parametrize(
    ("layout_args", "ratio", "tier"),
    [
        ({}, "1:1", "1K"),
        ({"aspect_ratio": "16:9", "resolution": "2K"}, "16:9", "2K"),
        ({"aspect_ratio": "4:5", "resolution": "4K"}, "4:5", "4K"),
        ({"size": "2508x1672"}, "3:2", "2K"),
    ],
    ids=["default", "16:9-2K", "4:5-4K", "size-WxH"],
)
async def test_layout_goes_to_aspect_ratio_and_resolution(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, layout_args: dict[str, Any], ratio: str, tier: str
) -> None:
    layout = resolve_layout(MODEL, **layout_args)
    result = await provider.run(make_request(layout=layout, output_format="png"))
    sent = fake_replicate.creates[0].json["input"]
    assert (sent["aspect_ratio"], sent["resolution"]) == (ratio, tier)
    assert image_size(result.images[0].data) == (layout.width, layout.height) == PRO_SIZES[(ratio, tier)]


async def test_input_images_become_data_uris(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    layout = resolve_layout(MODEL, input_shape=(PNG.width, PNG.height))
    sent = await sent_input(provider, fake_replicate, make_request("combine", images=(PNG, JPEG), layout=layout))
    assert sent["image_input"] == [data_uri(PNG), data_uri(JPEG)]
    assert sent["prompt"] == "combine"
    assert sent["aspect_ratio"] == "4:3"  # the layout's ratio, never match_input_image
    prediction = next(iter(fake_replicate.predictions.values()))
    assert prediction.images == [PNG.data, JPEG.data]


async def test_mask_is_an_extra_image_plus_a_note(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    sent = await sent_input(provider, fake_replicate, make_request("paint a hat", images=(PNG,), mask=MASK))
    assert sent["image_input"] == [data_uri(PNG), data_uri(MASK)]
    assert sent["prompt"] == f"paint a hat\n\n{MASK_NOTE}"
    assert "mask" not in sent


@pytest.mark.parametrize(
    ("gateway", "sent_format", "mime"), [("jpeg", "jpg", "image/jpeg"), ("png", "png", "image/png")]
)
async def test_output_format(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, gateway: str, sent_format: str, mime: str
) -> None:
    result = await provider.run(make_request(output_format=gateway, output_compression=80))
    sent = fake_replicate.creates[0].json["input"]
    assert sent["output_format"] == sent_format
    assert "output_compression" not in sent  # emulated by the gateway
    assert result.images[0].mime_type == mime == detect_mime(result.images[0].data)


async def test_no_output_format_gets_replicates_default_jpeg(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    """The mime type comes from the bytes: Replicate's default output is jpg."""
    result = await provider.run(make_request())
    assert "output_format" not in fake_replicate.creates[0].json["input"]
    assert result.images[0].mime_type == "image/jpeg"


async def test_options_are_merged_into_input(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    options = {"safety_filter_level": "block_low_and_above", "allow_fallback_model": True}
    sent = await sent_input(provider, fake_replicate, make_request(options=options))
    assert sent["safety_filter_level"] == "block_low_and_above"
    assert sent["allow_fallback_model"] is True


async def test_emulated_and_unavailable_options_are_not_sent(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    options = {"limit_generations": True, "enable_web_search": True, "safety_tolerance": "2"}
    sent = await sent_input(provider, fake_replicate, make_request(options=options, seed=5))
    assert set(sent) == {"prompt", "aspect_ratio", "resolution"}


@pytest.mark.parametrize(
    "extra",
    [
        {"resolution": "4K"},
        {"output_format": "png"},
        {"prompt": "another"},
        {"aspect_ratio": "21:9"},
        {"image_input": ["https://example.com/a.png"]},  # reserved even in text-to-image, where it is not built
        {"safety_filter_level": "block_only_high"},
    ],
)
async def test_extra_cannot_replace_input_fields(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, extra: dict[str, Any]
) -> None:
    """Unknown parameters reach the model's input, but never in place of what the gateway sets
    (and reports and bills): that is a 400 before any prediction is created."""
    err = await raised(provider, make_request(extra=extra))
    assert isinstance(err, InvalidRequest) and err.status_code == 400
    assert err.param == next(iter(extra)) and err.code == "reserved_upstream_field"
    assert fake_replicate.creates == []


async def test_unknown_extra_is_rejected_upstream_as_400(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    err = await raised(provider, make_request(extra={"bogus_field": 1}))
    assert fake_replicate.creates[0].json["input"]["bogus_field"] == 1
    assert isinstance(err, InvalidRequest) and err.status_code == 400
    assert err.code == "upstream_rejected_request"
    assert "bogus_field" in err.message and "Input validation failed" in err.message


async def test_n_is_sent_only_when_the_binding_declares_it(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    """Seedream-style bindings may declare n -> input.max_images; the array output is all kept."""
    fake_replicate.array_output = True
    binding = binding_with(n={"handling": "renamed", "to": "input.max_images"})
    result = await provider.run(make_request("three foxes", n=3, binding=binding, output_format="png"))
    assert fake_replicate.creates[0].json["input"]["max_images"] == 3
    colors = [pixel_at(image.data)[:3] for image in result.images]
    assert colors == [color_for("three foxes"), color_for("three foxes#1"), color_for("three foxes#2")]
    assert result.text is None and (result.input_tokens, result.output_tokens) == (0, 0)


async def test_n_is_not_sent_when_emulated(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    sent = await sent_input(provider, fake_replicate, make_request(n=2))
    assert "max_images" not in sent and "n" not in sent


async def test_edit_uses_the_edit_model_when_declared(
    provider: ReplicateProvider, fake_replicate: FakeReplicate
) -> None:
    data = BINDING.model_dump(exclude_none=True) | {"upstream_model_edit": "google/nano-banana-pro-edit"}
    binding = ProviderBinding.model_validate(data)
    await provider.run(make_request(images=(PNG,), binding=binding))
    await provider.run(make_request(binding=binding))
    assert [c.path for c in fake_replicate.creates] == ["/v1/models/google/nano-banana-pro-edit/predictions", PATH]


# --- catalog <-> adapter drift ----------------------------------------------------------------

_LAYOUT = resolve_layout(MODEL, aspect_ratio="21:9", resolution="2K")

# param -> (ProviderRequest arguments that use it, check of the value found at each `to` path)
DRIFT_CASES: dict[str, tuple[dict[str, Any], Callable[[list[Any]], bool]]] = {
    "prompt": ({"prompt": "drift check"}, lambda v: v == ["drift check"]),
    "image": ({"images": (PNG, JPEG)}, lambda v: v == [[data_uri(PNG), data_uri(JPEG)]]),
    "size": ({"layout": resolve_layout(MODEL, size="3129x1341")}, lambda v: v in (["21:9"], ["2K"])),
    "aspect_ratio": ({"layout": _LAYOUT}, lambda v: v == ["21:9"]),
    "resolution": ({"layout": _LAYOUT}, lambda v: v == ["2K"]),
    "output_format": ({"output_format": "jpeg"}, lambda v: v == ["jpg"]),
    "safety_filter_level": (
        {"options": {"safety_filter_level": "block_medium_and_above"}},
        lambda v: v == ["block_medium_and_above"],
    ),
    "allow_fallback_model": ({"options": {"allow_fallback_model": True}}, lambda v: v == [True]),
}
SENT_PARAMS = [name for name, h in BINDING.parameters.items() if h.handling in ("passthrough", "renamed", "converted")]


def test_binding_declares_sent_params() -> None:
    assert {"prompt", "image", "aspect_ratio", "resolution", "output_format"} <= set(SENT_PARAMS)
    for name in SENT_PARAMS:
        handling = BINDING.parameters[name]
        assert handling.to and handling.to.startswith("input."), f"{name} declares no input.* target"
        assert name in DRIFT_CASES, f"binding sends {name!r} to {handling.to!r}: add a drift case for it"


@pytest.mark.parametrize("param", SENT_PARAMS)
async def test_declared_target_path_is_in_the_input(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, param: str
) -> None:
    handling = BINDING.parameters[param]
    arguments, check = DRIFT_CASES[param]
    await provider.run(make_request(**arguments))
    body = fake_replicate.creates[0].json
    assert handling.to is not None
    for path in handling.to.split(" + "):  # "size" is converted to two fields
        values = lookup(body, path)
        assert values, f"{param}: nothing at declared path {path!r} in {sorted(body['input'])}"
        assert check(values), f"{param}: unexpected value(s) at {path!r}: {values!r}"


@pytest.mark.parametrize(
    "param", [n for n, h in BINDING.parameters.items() if h.handling in ("emulated", "not_available")]
)
def test_emulated_params_declare_no_target(param: str) -> None:
    assert BINDING.parameters[param].to is None


# --- prediction lifecycle ---------------------------------------------------------------------


async def test_polls_until_succeeded(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.processing_polls = 3
    result = await provider.run(make_request("an orange cat", output_format="png"))
    prediction = next(iter(fake_replicate.predictions.values()))
    assert prediction.status == "succeeded"
    polls = fake_replicate.polls
    assert len(polls) == 4  # processing x3, then succeeded
    assert {p.path for p in polls} == {f"/v1/predictions/{prediction.id}"}
    assert all(p.headers["authorization"] == f"Bearer {fake_replicate.api_key}" for p in polls)
    assert len(result.images) == 1
    image = result.images[0]
    assert image.mime_type == "image/png" and image.revised_prompt is None
    assert image_size(image.data) == (1024, 1024)
    assert pixel_at(image.data)[:3] == color_for("an orange cat")
    assert fake_replicate.cancels == 0


async def test_instant_prefer_wait_needs_no_poll(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.instant = True
    result = await provider.run(make_request())
    assert fake_replicate.polls == []
    assert len(fake_replicate.downloads) == 1 and len(result.images) == 1


async def test_download_is_sent_without_our_token(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    await provider.run(make_request())
    (download,) = fake_replicate.downloads
    assert "authorization" not in download.headers


async def test_array_output_is_handled(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.array_output = True
    result = await provider.run(make_request("array", output_format="png"))
    prediction = next(iter(fake_replicate.predictions.values()))
    assert isinstance(prediction.output, list) and len(prediction.output) == 1
    assert pixel_at(result.images[0].data)[:3] == color_for("array")


async def test_extra_images_beyond_n_are_dropped(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.array_output = True
    result = await provider.run(make_request("many", extra={"max_images": 3}))
    assert len(result.images) == 1
    assert len(fake_replicate.downloads) == 1


@pytest.mark.parametrize("array", [False, True], ids=["string", "array"])
async def test_data_uri_output(provider: ReplicateProvider, fake_replicate: FakeReplicate, array: bool) -> None:
    fake_replicate.data_uri_output = True
    fake_replicate.array_output = array
    result = await provider.run(make_request("inline", output_format="png"))
    assert fake_replicate.downloads == []
    assert result.images[0].mime_type == "image/png"
    assert pixel_at(result.images[0].data)[:3] == color_for("inline")


async def test_poll_falls_back_to_the_prediction_id(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    """No urls in the create answer: poll (and cancel) by id under the base URL."""
    fake_replicate.enqueue(RawResponse(201, '{"id": "p123", "status": "starting"}', content_type="application/json"))
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502  # the fake does not know p123
    assert [p.path for p in fake_replicate.polls] == ["/v1/predictions/p123"]
    assert [c.path for c in fake_replicate.cancel_requests] == ["/v1/predictions/p123/cancel"]


async def test_poll_retries_rate_limits(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.enqueue(PollError(429, "Request was throttled.", times=2, retry_after_s=0))
    result = await provider.run(make_request())
    assert len(result.images) == 1
    assert len(fake_replicate.polls) == 4  # 429, 429, processing, succeeded


async def test_poll_server_error_is_502_and_cancels(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.enqueue(PollError(500, "Internal server error"))
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502
    assert fake_replicate.cancels == 1


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_model_is_502(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.known_models = {"someone/else"}
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502


async def test_failed_prediction_is_502(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.enqueue(PredictionFails("CUDA error: device-side assert triggered"))
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502
    assert err.code == "upstream_prediction_failed"
    assert "device-side assert" in err.message
    assert fake_replicate.cancels == 0  # already over: nothing to cancel


@pytest.mark.parametrize(
    "behaviour",
    [
        CapacityFailure(),
        PredictionFails("Model is at capacity, try again later"),
        PredictionFails("429 RESOURCE_EXHAUSTED: quota"),
        PredictionFails("The model is overloaded."),
        PredictionFails("Rate limit exceeded for google/nano-banana-pro"),
    ],
    ids=["E003", "capacity", "resource-exhausted", "overloaded", "rate-limit"],
)
async def test_capacity_failure_is_503(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, behaviour: Any
) -> None:
    fake_replicate.enqueue(behaviour)
    err = await raised(provider)
    assert isinstance(err, UpstreamUnavailable) and err.status_code == 503
    assert err.code == "upstream_at_capacity"


# SAFETY_ERROR (E005) is in test_contract.py (test_content_policy_is_a_violation[replicate]).
@pytest.mark.parametrize("text", ["NSFW content detected", "Prompt blocked by safety filter"], ids=["nsfw", "safety"])
async def test_safety_failure_is_content_policy(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, text: str
) -> None:
    fake_replicate.enqueue(PredictionFails(text))
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation) and err.status_code == 400
    assert err.code == "content_policy_violation" and err.param == "prompt"
    assert text in err.message


@pytest.mark.parametrize("status", ["canceled", "aborted"])
async def test_canceled_prediction_is_502(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, status: str
) -> None:
    fake_replicate.enqueue(PredictionCanceled(status))
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502
    assert err.code == "upstream_prediction_canceled"


@pytest.mark.parametrize("body", ["[]", '"text"', "{}", '{"id": "x", "status": "exploded"}'])
async def test_unexpected_prediction_shapes(
    provider: ReplicateProvider, fake_replicate: FakeReplicate, body: str
) -> None:
    fake_replicate.enqueue(RawResponse(201, body, content_type="application/json"))
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse and err.code == "upstream_bad_response"


@pytest.mark.parametrize(
    ("output", "code"),
    [
        ("null", "no_image_generated"),
        ("[]", "no_image_generated"),
        ("42", "upstream_bad_response"),
        ("[1, 2]", "upstream_bad_response"),
        ('"data:image/png;base64,aGVsbG8="', "upstream_bad_response"),
        ('"data:image/png;base64,!!!"', "upstream_bad_response"),
        ('"data:image/png"', "upstream_bad_response"),
    ],
    ids=["null", "empty-list", "number", "numbers", "data-not-image", "data-bad-b64", "data-no-comma"],
)
async def test_bad_outputs(provider: ReplicateProvider, fake_replicate: FakeReplicate, output: str, code: str) -> None:
    body = '{"id": "x", "status": "succeeded", "output": %s}' % output
    fake_replicate.enqueue(RawResponse(201, body, content_type="application/json"))
    err = await raised(provider)
    assert isinstance(err, UpstreamError) and type(err).default_code == err.code == code


async def test_output_url_404_is_502(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.enqueue(OutputMissing())
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502
    assert "404" in err.message


async def test_output_not_an_image_is_502(provider: ReplicateProvider, fake_replicate: FakeReplicate) -> None:
    fake_replicate.enqueue(OutputNotImage())
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse and err.status_code == 502
    assert err.code == "upstream_bad_response"


# --- the fake itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aspect_ratio", "7:3"),
        ("resolution", "1k"),
        ("output_format", "jpeg"),
        ("safety_filter_level", "none"),
        ("image_input", ["ftp://x/y.png"]),
        ("image_input", ["data:image/png;base64,aGVsbG8="]),
        ("image_input", [data_uri(PNG)] * 15),
        ("max_images", 2),
        ("allow_fallback_model", "yes"),
    ],
)
async def test_fake_validates_like_the_schema(
    fake_replicate: FakeReplicate, http: httpx.AsyncClient, field: str, value: Any
) -> None:
    response = await http.post(
        f"{fake_replicate.base_url}{PATH}",
        json={"input": {"prompt": "p", field: value}},
        headers={"authorization": f"Bearer {fake_replicate.api_key}"},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["title"] == "Input validation failed" and body["status"] == 422
    assert field in body["detail"]


@pytest.mark.parametrize(
    "headers", [{"prefer": "wait=0"}, {"prefer": "wait=61"}, {"prefer": "respond-async"}, {"cancel-after": "soon"}]
)
async def test_fake_checks_prefer_and_cancel_after(
    fake_replicate: FakeReplicate, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.post(
        f"{fake_replicate.base_url}{PATH}",
        json={"input": {"prompt": "p"}},
        headers={"authorization": f"Bearer {fake_replicate.api_key}", **headers},
    )
    assert response.status_code == 400


async def test_fake_requires_prompt_and_input(fake_replicate: FakeReplicate, http: httpx.AsyncClient) -> None:
    auth = {"authorization": f"Bearer {fake_replicate.api_key}"}
    bodies: list[dict[str, Any]] = [{"input": {}}, {"webhook": "https://example.com"}]
    for body in bodies:
        response = await http.post(f"{fake_replicate.base_url}{PATH}", json=body, headers=auth)
        assert response.status_code == 422
