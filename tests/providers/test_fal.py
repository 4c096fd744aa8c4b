"""Contract tests of the fal adapter against the fake fal queue API (real HTTP).

The adapter is called directly: a `ProviderRequest` built from the catalog binding and a layout
from `resolve_layout`, no gateway server. Spec: the provider wire-format reference (the spec), section 4.

What every provider shares (auth, rate limits, 5xx, rejected input, policy blocks, garbled answers,
size cap, timeouts and cancels, trailing slash, no mutation, seed/layout/images where the plan says)
is in test_contract.py; this file keeps what is specific to this upstream.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from imagegate.catalog import ModelEntry, load_builtin_catalog
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    InvalidRequest,
    NoImageGenerated,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.normalize import Layout, resolve_layout
from imagegate.providers import ProviderRequest, ProviderResult
from imagegate.providers.fal import FalProvider, build_input, fallback_urls
from imagegate.providers.gemini import MASK_NOTE
from tests.fakes.fal import (
    PRO_SIZES,
    FailsAfterRunning,
    FakeFal,
    FalError,
    Hang,
    MalformedJSON,
    MissingFiles,
    NoImages,
    NoQueueUrls,
    OnResult,
    OnStatus,
    RawResponse,
    StuckInQueue,
    description_for,
)
from tests.fakes.images import color_for, detect_mime, image_size, pixel_at, solid_jpeg

from .inputs import JPEG, MASK, PNG, WEBP, data_uri

_MODEL = load_builtin_catalog().get("gemini-3-pro-image-preview")
assert _MODEL is not None
MODEL: ModelEntry = _MODEL
BINDING = MODEL.providers["fal"]
GENERATE_PATH = "/fal-ai/nano-banana-pro"
EDIT_PATH = "/fal-ai/nano-banana-pro/edit"


def make_request(
    prompt: str = "a red fox in snow", *, layout: Layout | None = None, mode: str | None = None, **kwargs: Any
) -> ProviderRequest:
    if mode is None:
        mode = "edit" if kwargs.get("images") else "t2i"
    if layout is None:
        images = kwargs.get("images")
        layout = resolve_layout(MODEL, input_shape=(images[0].width, images[0].height) if images else None)
    return ProviderRequest(mode=mode, prompt=prompt, layout=layout, binding=BINDING, **kwargs)


@pytest.fixture
def provider(fake_fal: FakeFal, http: httpx.AsyncClient) -> FalProvider:
    provider = FalProvider(api_key=fake_fal.api_key, base_url=fake_fal.base_url, client=http)
    provider.poll_interval = 0.01
    return provider


async def sent_input(provider: FalProvider, fake: FakeFal, request: ProviderRequest) -> dict[str, Any]:
    """Run the request through the fake (which validates it like fal's schema) and return the input."""
    result = await provider.run(request)
    assert isinstance(result, ProviderResult)
    assert len(fake.submits) == 1
    body = fake.submits[0].json
    assert isinstance(body, dict)
    return body


async def raised(provider: FalProvider, request: ProviderRequest | None = None) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request or make_request())
    return info.value


def test_provider_identity() -> None:
    assert FalProvider.provider_id == "fal"
    assert FalProvider.key_env_var == "FAL_KEY"
    assert FalProvider.base_url_env_var == "FAL_BASE_URL"
    assert FalProvider.default_base_url == "https://queue.fal.run"
    assert FalProvider.poll_interval == 0.5
    assert BINDING.upstream_model == "fal-ai/nano-banana-pro"
    assert BINDING.upstream_model_edit == "fal-ai/nano-banana-pro/edit"


# --- request wire format --------------------------------------------------------------------


async def test_submit_path_auth_and_input(provider: FalProvider, fake_fal: FakeFal) -> None:
    body = await sent_input(provider, fake_fal, make_request("a lighthouse at dusk"))
    submit = fake_fal.submits[0]
    assert submit.path == GENERATE_PATH
    assert submit.headers["authorization"] == "Key test-fal-key"
    assert submit.headers["content-type"].startswith("application/json")
    assert body == {"prompt": "a lighthouse at dusk", "num_images": 1, "aspect_ratio": "1:1", "resolution": "1K"}


async def test_every_queue_call_carries_the_key(provider: FalProvider, fake_fal: FakeFal) -> None:
    await provider.run(make_request())
    queue_calls = [r for r in fake_fal.requests if not r.path.startswith("/files/")]
    assert len(queue_calls) >= 3
    assert {r.headers.get("authorization") for r in queue_calls} == {"Key test-fal-key"}


async def test_request_timeout_header_from_the_deadline(provider: FalProvider, fake_fal: FakeFal) -> None:
    provider.timeout = 30
    await provider.run(make_request())
    assert fake_fal.submits[0].headers["x-fal-request-timeout"] in ("29", "30")


async def test_no_request_timeout_header_under_two_seconds(provider: FalProvider, fake_fal: FakeFal) -> None:
    provider.timeout = 1.5
    await provider.run(make_request())
    assert "x-fal-request-timeout" not in fake_fal.submits[0].headers


async def test_polls_status_then_fetches_result(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.queue_polls = 2
    await provider.run(make_request())
    job = next(iter(fake_fal.jobs.values()))
    root = f"/fal-ai/nano-banana-pro/requests/{job.request_id}"
    polls = [r for r in fake_fal.requests if r.path == f"{root}/status"]
    assert len(polls) == 4  # IN_QUEUE, IN_QUEUE, IN_PROGRESS, COMPLETED
    assert all(r.method == "GET" and r.query.get("logs") == "0" for r in polls)
    assert [r.method for r in fake_fal.requests if r.path == root] == ["GET"]
    assert fake_fal.cancels == 0


async def test_edit_submits_to_edit_and_follows_urls_without_it(provider: FalProvider, fake_fal: FakeFal) -> None:
    result = await provider.run(make_request("make it blue", images=(PNG,)))
    assert fake_fal.submits[0].path == EDIT_PATH
    job = next(iter(fake_fal.jobs.values()))
    others = [r.path for r in fake_fal.requests if r.method == "GET" and not r.path.startswith("/files/")]
    assert others and all(p.startswith(f"/fal-ai/nano-banana-pro/requests/{job.request_id}") for p in others)
    assert not any("/edit/requests" in r.path for r in fake_fal.requests)
    assert len(result.images) == 1


async def test_edit_method_uses_the_edit_endpoint(provider: FalProvider, fake_fal: FakeFal) -> None:
    await provider.edit(make_request(images=(PNG,)))
    assert fake_fal.submits[0].path == EDIT_PATH


async def test_missing_queue_urls_are_built_without_sub_path(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(NoQueueUrls())
    result = await provider.run(make_request(images=(PNG,)))
    assert len(result.images) == 1
    job = next(iter(fake_fal.jobs.values()))
    assert any(r.path == f"/fal-ai/nano-banana-pro/requests/{job.request_id}/status" for r in fake_fal.requests)


def test_fallback_urls_drop_the_sub_path() -> None:
    urls = fallback_urls("https://queue.fal.run", "fal-ai/nano-banana-pro/edit", "abc")
    assert urls.status_url == "https://queue.fal.run/fal-ai/nano-banana-pro/requests/abc/status"
    assert urls.response_url == "https://queue.fal.run/fal-ai/nano-banana-pro/requests/abc"
    assert urls.cancel_url == "https://queue.fal.run/fal-ai/nano-banana-pro/requests/abc/cancel"


@pytest.mark.parametrize(
    ("layout_args", "ratio", "tier"),
    [
        ({}, "1:1", "1K"),
        ({"aspect_ratio": "16:9", "resolution": "2K"}, "16:9", "2K"),
        ({"aspect_ratio": "21:9"}, "21:9", "1K"),
        ({"aspect_ratio": "4:5", "resolution": "4K"}, "4:5", "4K"),
        ({"size": "2508x1672"}, "3:2", "2K"),
    ],
    ids=["default", "16:9-2K", "21:9", "4:5-4K", "size-WxH"],
)
async def test_layout_fields(
    provider: FalProvider, fake_fal: FakeFal, layout_args: dict[str, Any], ratio: str, tier: str
) -> None:
    layout = resolve_layout(MODEL, **layout_args)
    result = await provider.run(make_request(layout=layout))
    body = fake_fal.submits[0].json
    assert (body["aspect_ratio"], body["resolution"]) == (ratio, tier)
    assert image_size(result.images[0].data) == (layout.width, layout.height) == PRO_SIZES[(ratio, tier)]


@pytest.mark.parametrize("n", [1, 2, 4])
async def test_n_is_num_images(provider: FalProvider, fake_fal: FakeFal, n: int) -> None:
    result = await provider.run(make_request("many", n=n))
    assert fake_fal.submits[0].json["num_images"] == n
    assert [pixel_at(i.data)[:3] for i in result.images] == [color_for(f"many#{i}") for i in range(n)]


async def test_unset_values_are_not_sent(provider: FalProvider, fake_fal: FakeFal) -> None:
    body = await sent_input(provider, fake_fal, make_request())
    for absent in ("seed", "output_format", "image_urls", "safety_tolerance", "sync_mode"):
        assert absent not in body


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_output_format_native(provider: FalProvider, fake_fal: FakeFal, fmt: str) -> None:
    result = await provider.run(make_request(output_format=fmt))
    assert fake_fal.submits[0].json["output_format"] == fmt
    assert result.images[0].mime_type == f"image/{fmt}"
    assert detect_mime(result.images[0].data) == f"image/{fmt}"


async def test_images_are_data_uris(provider: FalProvider, fake_fal: FakeFal) -> None:
    body = await sent_input(provider, fake_fal, make_request("combine", images=(PNG, JPEG, WEBP)))
    assert body["image_urls"] == [data_uri(PNG), data_uri(JPEG), data_uri(WEBP)]
    assert body["prompt"] == "combine"
    job = next(iter(fake_fal.jobs.values()))
    assert job.input_images == [PNG.data, JPEG.data, WEBP.data]


async def test_mask_is_an_extra_image_plus_a_note(provider: FalProvider, fake_fal: FakeFal) -> None:
    assert BINDING.parameters["mask"].handling == "emulated"
    body = await sent_input(provider, fake_fal, make_request("paint a hat", images=(PNG,), mask=MASK))
    assert body["image_urls"] == [data_uri(PNG), data_uri(MASK)]
    assert body["prompt"].startswith("paint a hat")
    assert body["prompt"].endswith(MASK_NOTE)
    assert "mask" not in body


@pytest.mark.parametrize("value", ["1", "4", "6", 5], ids=["1", "4", "6", "int-5"])
async def test_safety_tolerance_is_a_string(provider: FalProvider, fake_fal: FakeFal, value: Any) -> None:
    body = await sent_input(provider, fake_fal, make_request(options={"safety_tolerance": value}))
    assert body["safety_tolerance"] == str(value)


async def test_options_and_extra_are_merged(provider: FalProvider, fake_fal: FakeFal) -> None:
    options = {"enable_web_search": True, "limit_generations": False, "safety_tolerance": "5"}
    extra = {"system_prompt": "be brief"}
    body = await sent_input(provider, fake_fal, make_request(options=options, extra=extra))
    assert body["enable_web_search"] is True
    assert body["limit_generations"] is False
    assert body["safety_tolerance"] == "5"
    assert body["system_prompt"] == "be brief"


@pytest.mark.parametrize(
    "extra",
    [
        {"resolution": "4K"},
        {"prompt": "something else"},
        {"num_images": 4},
        {"image_urls": ["https://x/y.png"]},
        {"sync_mode": True},
        {"aspect_ratio": "21:9"},
        {"output_format": "webp"},
    ],
)
async def test_extra_cannot_replace_built_fields(
    provider: FalProvider, fake_fal: FakeFal, extra: dict[str, Any]
) -> None:
    """Pass-through may add fields, never replace what the gateway reports and bills (a 4K
    image billed as 1K); the binding's targets are reserved even when this request left them out."""
    err = await raised(provider, make_request(extra=extra))
    assert isinstance(err, InvalidRequest) and err.status_code == 400
    assert err.param == next(iter(extra)) and err.code == "reserved_upstream_field"
    assert fake_fal.requests == []


def test_not_available_options_are_not_sent() -> None:
    assert BINDING.parameters["safety_filter_level"].handling == "not_available"
    body = build_input(make_request(options={"safety_filter_level": "block_only_high", "enable_web_search": True}))
    assert "safety_filter_level" not in body
    assert body["enable_web_search"] is True


# --- catalog <-> adapter drift ----------------------------------------------------------------

_LAYOUT = resolve_layout(MODEL, aspect_ratio="21:9", resolution="2K")

# param -> (ProviderRequest arguments that use it, the value expected at its `to` field)
DRIFT_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "prompt": ({"prompt": "drift check"}, "drift check"),
    "image": ({"images": (PNG, JPEG)}, [data_uri(PNG), data_uri(JPEG)]),
    "aspect_ratio": ({"layout": _LAYOUT}, "21:9"),
    "resolution": ({"layout": _LAYOUT}, "2K"),
    "seed": ({"seed": 987}, 987),
    "n": ({"n": 3}, 3),
    "output_format": ({"output_format": "webp"}, "webp"),
    "enable_web_search": ({"options": {"enable_web_search": True}}, True),
    "limit_generations": ({"options": {"limit_generations": False}}, False),
    "safety_tolerance": ({"options": {"safety_tolerance": "2"}}, "2"),
    "sync_mode": ({"options": {"sync_mode": True}}, True),
}
# Composite targets ("aspect_ratio + resolution"): each named field, from one request.
COMPOSITE_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "size": ({"layout": resolve_layout(MODEL, size="3129x1341")}, {"aspect_ratio": "21:9", "resolution": "2K"}),
}
SENT_PARAMS = [name for name, h in BINDING.parameters.items() if h.handling in ("passthrough", "renamed", "converted")]


@pytest.mark.parametrize("param", SENT_PARAMS)
async def test_declared_target_field_is_in_the_input(provider: FalProvider, fake_fal: FakeFal, param: str) -> None:
    handling = BINDING.parameters[param]
    assert handling.to is not None, f"{param}: {handling.handling} without a target"
    if " + " in handling.to:
        arguments, expected = COMPOSITE_CASES[param]
        assert set(handling.to.split(" + ")) == set(expected)
    else:
        if param not in DRIFT_CASES:
            pytest.fail(f"no drift case for {param!r} (declared {handling.handling} to {handling.to!r})")
        arguments, value = DRIFT_CASES[param]
        expected = {handling.to: value}
    body = await sent_input(provider, fake_fal, make_request(**arguments))
    for field, value in expected.items():
        assert field in body, f"{param}: nothing at declared field {field!r} in {sorted(body)}"
        assert body[field] == value, f"{param}: unexpected value at {field!r}: {body[field]!r}"


@pytest.mark.parametrize(
    "param", [n for n, h in BINDING.parameters.items() if h.handling in ("emulated", "not_available")]
)
def test_emulated_params_declare_no_target(param: str) -> None:
    assert BINDING.parameters[param].to is None


# --- responses --------------------------------------------------------------------------------


async def test_images_downloaded_from_urls(provider: FalProvider, fake_fal: FakeFal) -> None:
    result = await provider.run(make_request("an orange cat", n=2))
    assert len(fake_fal.downloads) == 2
    assert [i.mime_type for i in result.images] == ["image/png", "image/png"]
    assert [pixel_at(i.data)[:3] for i in result.images] == [color_for("an orange cat#0"), color_for("an orange cat#1")]
    assert result.input_tokens == result.output_tokens == 0


async def test_sync_mode_data_uris_are_decoded(provider: FalProvider, fake_fal: FakeFal) -> None:
    result = await provider.run(make_request("inline", n=2, output_format="jpeg", options={"sync_mode": True}))
    assert fake_fal.submits[0].json["sync_mode"] is True
    assert fake_fal.downloads == []
    assert not any(r.path.startswith("/files/") for r in fake_fal.requests)
    assert [i.mime_type for i in result.images] == ["image/jpeg", "image/jpeg"]
    assert detect_mime(result.images[0].data) == "image/jpeg"
    assert image_size(result.images[1].data) == (1024, 1024)


async def test_description_is_revised_prompt(provider: FalProvider, fake_fal: FakeFal) -> None:
    result = await provider.run(make_request("a blue bird", n=2))
    assert result.text == description_for("a blue bird")
    assert [i.revised_prompt for i in result.images] == [description_for("a blue bird")] * 2


async def test_mime_comes_from_the_bytes(provider: FalProvider, fake_fal: FakeFal) -> None:
    jpeg = base64.b64encode(solid_jpeg(8, 8)).decode()
    body = '{"images": [{"url": "data:image/png;base64,%s", "content_type": "image/png"}]}' % jpeg
    fake_fal.enqueue(OnResult(RawResponse(200, body, content_type="application/json")))
    result = await provider.run(make_request())
    assert result.images[0].mime_type == "image/jpeg"
    assert result.text is None and result.images[0].revised_prompt is None


# --- errors -----------------------------------------------------------------------------------


async def test_extra_field_is_400(provider: FalProvider, fake_fal: FakeFal) -> None:
    err = await raised(provider, make_request(extra={"bogus_field": 1}))
    assert isinstance(err, InvalidRequest)
    assert err.status_code == 400
    assert err.code == "upstream_rejected_request"
    assert "bogus_field" in err.message and "extra fields not permitted" in err.message


async def test_invalid_value_is_400(provider: FalProvider, fake_fal: FakeFal) -> None:
    err = await raised(provider, make_request(n=9))
    assert isinstance(err, InvalidRequest)
    assert err.code == "upstream_rejected_request"
    assert "num_images" in err.message


@pytest.mark.parametrize("status", [400, 500])
async def test_content_policy_type_wins_over_status(provider: FalProvider, fake_fal: FakeFal, status: int) -> None:
    detail = [{"loc": ["body", "image_urls", 0], "msg": "flagged image", "type": "content_policy_violation"}]
    fake_fal.enqueue(FalError(status, detail))
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation)
    assert err.status_code == 400


async def test_error_type_header_is_read(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(FalError(422, "Blocked.", error_type="content_policy_violation"))
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation)


async def test_no_media_generated_type(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(FalError(422, [{"loc": ["body"], "msg": "no image", "type": "no_media_generated"}]))
    err = await raised(provider)
    assert type(err) is NoImageGenerated
    assert err.code == "no_image_generated"


async def test_string_detail_is_in_the_message(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(FalError(400, "Image is too large"))
    err = await raised(provider)
    assert isinstance(err, InvalidRequest)
    assert err.code == "upstream_rejected_request"
    assert "Image is too large" in err.message


async def test_unknown_app_is_502(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.known_apps = {"fal-ai/something-else"}
    err = await raised(provider)
    assert type(err) is UpstreamError
    assert err.status_code == 502


async def test_stuck_in_queue_times_out_and_cancels(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(StuckInQueue())
    provider.timeout = 0.5
    start = time.monotonic()
    err = await raised(provider)
    assert time.monotonic() - start < 1.2
    assert isinstance(err, UpstreamTimeout)
    assert err.status_code == 504
    assert fake_fal.cancels == 1
    job = next(iter(fake_fal.jobs.values()))
    assert job.cancelled
    cancel = [r for r in fake_fal.requests if r.method == "PUT"]
    assert [r.path for r in cancel] == [f"/fal-ai/nano-banana-pro/requests/{job.request_id}/cancel"]
    assert cancel[0].headers["authorization"] == "Key test-fal-key"


@pytest.mark.parametrize(
    ("error_type", "kind", "code"),
    [
        ("content_policy_violation", ContentPolicyViolation, "content_policy_violation"),
        ("no_media_generated", NoImageGenerated, "no_image_generated"),
        ("internal_server_error", UpstreamError, "upstream_request_failed"),
    ],
)
async def test_fails_after_running(
    provider: FalProvider, fake_fal: FakeFal, error_type: str, kind: type[ImagegateError], code: str
) -> None:
    fake_fal.enqueue(FailsAfterRunning(error_type, "it went wrong"))
    err = await raised(provider)
    assert type(err) is kind
    assert err.code == code
    assert "it went wrong" in err.message
    job = next(iter(fake_fal.jobs.values()))
    assert not any(r.path == f"/fal-ai/nano-banana-pro/requests/{job.request_id}" for r in fake_fal.requests)


async def test_hang_on_result_is_504(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(OnResult(Hang(10)))
    provider.timeout = 0.3
    err = await raised(provider)
    assert isinstance(err, UpstreamTimeout)


@pytest.mark.parametrize(
    "behaviour",
    [FalError(503, "busy"), FalError(429, "slow down"), RawResponse(502, "<html>Bad Gateway</html>")],
    ids=["503", "429", "502"],
)
async def test_transient_poll_failure_is_retried(provider: FalProvider, fake_fal: FakeFal, behaviour: Any) -> None:
    """The job is running (and billed): one failed status poll must not throw it away."""
    fake_fal.enqueue(OnStatus(behaviour, polls=2))
    result = await provider.run(make_request())
    assert len(result.images) == 1
    assert fake_fal.cancels == 0


async def test_persistent_poll_failure_gives_up_and_cancels(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(OnStatus(FalError(503, "busy", retry_after_s=0.04), polls=100))
    err = await raised(provider)
    assert isinstance(err, UpstreamUnavailable)
    assert err.retry_after == 0.04
    assert len(fake_fal.by_path_suffix("/status")) == 5
    assert fake_fal.cancels == 1


async def test_lost_request_is_502_and_cancelled(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(OnStatus(FalError(404, "Request not found")))
    err = await raised(provider)
    assert type(err) is UpstreamError
    assert "Request not found" in err.message
    assert len(fake_fal.by_path_suffix("/status")) == 1
    assert fake_fal.cancels == 1


@pytest.mark.parametrize(
    "body", ['{"status": "EXPLODED"}', '{"queue_position": 1}', "[]"], ids=["unknown-state", "no-state", "not-object"]
)
async def test_bad_status_answer_is_bad_response(provider: FalProvider, fake_fal: FakeFal, body: str) -> None:
    fake_fal.enqueue(OnStatus(RawResponse(200, body, content_type="application/json")))
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse
    assert err.code == "upstream_bad_response"


# On the submit: test_contract.py (test_malformed_json_is_a_bad_response[fal]).
@pytest.mark.parametrize("behaviour", [OnResult(MalformedJSON()), OnStatus(MalformedJSON())], ids=["result", "status"])
async def test_malformed_json_is_bad_response(provider: FalProvider, fake_fal: FakeFal, behaviour: Any) -> None:
    fake_fal.enqueue(behaviour)
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse
    assert err.status_code == 502
    assert err.code == "upstream_bad_response"


async def test_empty_images_is_no_image_generated(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(NoImages())
    err = await raised(provider)
    assert type(err) is NoImageGenerated
    assert err.status_code == 502
    assert err.code == "no_image_generated"


async def test_missing_output_file_is_502(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(MissingFiles())
    err = await raised(provider)
    assert type(err) is UpstreamError
    assert err.status_code == 502
    assert "404" in err.message


async def test_result_error_is_mapped(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.enqueue(OnResult(FalError(503, "overloaded", retry_after_s=3)))
    err = await raised(provider)
    assert isinstance(err, UpstreamUnavailable)
    assert err.retry_after == 3


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        '{"images": "x"}',
        '{"images": [{"content_type": "image/png"}]}',
        '{"images": [{"url": "data:image/png;base64,aGVsbG8="}]}',
        '{"images": [{"url": "data:image/png;base64,!!!"}]}',
        '{"images": [{"url": "ftp://example.com/x.png"}]}',
    ],
    ids=["list", "images-not-list", "no-url", "not-an-image", "bad-base64", "ftp"],
)
async def test_malformed_output_is_bad_response(provider: FalProvider, fake_fal: FakeFal, body: str) -> None:
    fake_fal.enqueue(OnResult(RawResponse(200, body, content_type="application/json")))
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse
    assert err.code == "upstream_bad_response"


async def test_downloaded_non_image_is_bad_response(provider: FalProvider, fake_fal: FakeFal) -> None:
    fake_fal.files["junk.png"] = (b"<html>nope</html>", "image/png")
    body = '{"images": [{"url": "%s/files/junk.png"}]}' % fake_fal.url
    fake_fal.enqueue(OnResult(RawResponse(200, body, content_type="application/json")))
    err = await raised(provider)
    assert type(err) is UpstreamBadResponse
    assert err.code == "upstream_bad_response"


# --- the fake itself: it must refuse what fal refuses ------------------------------------------


async def _submit(
    http: httpx.AsyncClient, fake: FakeFal, path: str, body: Any, key: str | None = "test-fal-key"
) -> httpx.Response:
    headers = {"authorization": f"Key {key}"} if key else {}
    return await http.post(fake.url + path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("path", "body", "loc", "type_"),
    [
        (GENERATE_PATH, {}, ["body", "prompt"], "value_error.missing"),
        (GENERATE_PATH, {"prompt": 3}, ["body", "prompt"], "type_error.str"),
        (GENERATE_PATH, {"prompt": "p", "image_urls": []}, ["body", "image_urls"], "value_error.extra"),
        (GENERATE_PATH, {"prompt": "p", "num_images": 5}, ["body", "num_images"], "value_error.number.not_le"),
        (GENERATE_PATH, {"prompt": "p", "num_images": 0}, ["body", "num_images"], "value_error.number.not_ge"),
        (GENERATE_PATH, {"prompt": "p", "aspect_ratio": "7:3"}, ["body", "aspect_ratio"], "type_error.enum"),
        (GENERATE_PATH, {"prompt": "p", "resolution": "1k"}, ["body", "resolution"], "type_error.enum"),
        (GENERATE_PATH, {"prompt": "p", "output_format": "gif"}, ["body", "output_format"], "type_error.enum"),
        (GENERATE_PATH, {"prompt": "p", "safety_tolerance": 4}, ["body", "safety_tolerance"], "type_error.enum"),
        (GENERATE_PATH, {"prompt": "p", "sync_mode": "yes"}, ["body", "sync_mode"], "type_error.bool"),
        (EDIT_PATH, {"prompt": "p"}, ["body", "image_urls"], "value_error.missing"),
        (
            EDIT_PATH,
            {"prompt": "p", "image_urls": ["data:image/png;base64,aGVsbG8="]},
            ["body", "image_urls", 0],
            "image_load_error",
        ),
        (EDIT_PATH, {"prompt": "p", "image_urls": ["c:/x.png"]}, ["body", "image_urls", 0], "value_error.url.scheme"),
    ],
)
async def test_fake_validates_like_fal(
    fake_fal: FakeFal, http: httpx.AsyncClient, path: str, body: dict[str, Any], loc: list[Any], type_: str
) -> None:
    response = await _submit(http, fake_fal, path, body)
    assert response.status_code == 422
    assert {"loc": loc, "type": type_} in [{"loc": d["loc"], "type": d["type"]} for d in response.json()["detail"]]
    assert fake_fal.jobs == {}


async def test_fake_auth_and_lifecycle(fake_fal: FakeFal, http: httpx.AsyncClient) -> None:
    assert (await _submit(http, fake_fal, GENERATE_PATH, {"prompt": "p"}, key=None)).status_code == 401
    assert (await _submit(http, fake_fal, GENERATE_PATH, {"prompt": "p"}, key="nope")).json() == {
        "detail": "Unauthorized"
    }
    response = await _submit(
        http, fake_fal, EDIT_PATH, {"prompt": "p", "image_urls": [data_uri(PNG)], "aspect_ratio": "auto"}
    )
    answer = response.json()
    assert "/edit/" not in answer["status_url"] and answer["response_url"].endswith(answer["request_id"])
    auth = {"authorization": "Key test-fal-key"}
    assert (await http.get(answer["status_url"])).status_code == 401
    assert (await http.get(answer["response_url"], headers=auth)).status_code == 400  # still queued
    edit_status = answer["status_url"].replace("/requests/", "/edit/requests/")
    assert (await http.get(edit_status, headers=auth)).status_code == 404
    states = [(await http.get(answer["status_url"], headers=auth)).json()["status"] for _ in range(3)]
    assert states == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    output = (await http.get(answer["response_url"], headers=auth)).json()
    assert output["images"][0]["width"] == output["images"][0]["height"] == 1024  # auto -> 1:1
    assert output["description"] == description_for("p")
    cancel = await http.put(answer["cancel_url"], headers=auth)
    assert cancel.status_code == 400 and cancel.json() == {"status": "ALREADY_COMPLETED"}
