"""Contract tests of the Black Forest Labs adapter against the fake FLUX API (real HTTP).

First the adapter, called directly with a `ProviderRequest` built from the catalog's "bfl" bindings
(`data/providers/bfl.json`) and a layout from `resolve_layout`; then end to end: the official openai
SDK -> a real gateway configured with nothing but BFL_API_KEY / BFL_BASE_URL -> the fake.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from imagegate.catalog import ModelEntry, builtin_data, parse_entries
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from imagegate.normalize import Layout, resolve_layout
from imagegate.providers import ProviderRequest
from imagegate.providers.bfl import BflProvider, check_polling_url, status_error
from tests.fakes.bfl import (
    BflError,
    FakeBfl,
    MalformedJSON,
    Moderated,
    PollError,
    SampleMissing,
    Stuck,
    TaskFails,
    TaskLost,
)
from tests.fakes.images import color_for, detect_mime, image_size, pixel_at, solid_png

from ..conftest import API_KEY, RunningGateway
from .inputs import JPEG, MASK, PNG


def bfl_models() -> dict[str, ModelEntry]:
    raw = json.loads(resources.files("imagegate").joinpath("data/providers/bfl.json").read_text("utf-8"))
    return {m.id: m for m in parse_entries(raw, builtin_data()["default_parameters"])}


MODELS = bfl_models()
FLUX2, KONTEXT = MODELS["flux-2-pro"], MODELS["flux-kontext-pro"]


def make_request(
    model: ModelEntry = FLUX2, prompt: str = "a red fox in snow", *, layout: Layout | None = None, **kwargs: Any
) -> ProviderRequest:
    mode = "edit" if kwargs.get("images") else "t2i"
    shape = (kwargs["images"][0].width, kwargs["images"][0].height) if kwargs.get("images") else None
    return ProviderRequest(
        mode=mode,
        prompt=prompt,
        layout=layout or resolve_layout(model, input_shape=shape),
        binding=model.providers["bfl"],
        **kwargs,
    )


@pytest.fixture(scope="module")
def fake_bfl_server() -> Iterator[FakeBfl]:
    with FakeBfl() as fake:
        yield fake


@pytest.fixture
def fake_bfl(fake_bfl_server: FakeBfl) -> Iterator[FakeBfl]:
    fake_bfl_server.reset()
    yield fake_bfl_server
    fake_bfl_server.reset()


@pytest.fixture
def provider(fake_bfl: FakeBfl, http: httpx.AsyncClient) -> BflProvider:
    provider = BflProvider(api_key=fake_bfl.api_key, base_url=fake_bfl.base_url, client=http)
    provider.poll_interval = 0.01
    return provider


async def raised(provider: BflProvider, request: ProviderRequest | None = None) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request or make_request())
    return info.value


def test_provider_identity() -> None:
    assert BflProvider.provider_id == "bfl"
    assert BflProvider.key_env_var == "BFL_API_KEY"
    assert BflProvider.base_url_env_var == "BFL_BASE_URL"
    assert BflProvider.default_base_url == "https://api.bfl.ai"


# --- request wire format --------------------------------------------------------------------


async def test_t2i_submit_polls_the_returned_url_and_downloads(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.pending_polls = 2
    result = await provider.run(make_request(prompt="a lighthouse", output_format="png"))
    (submit,) = fake_bfl.submits
    assert submit.path == "/v1/flux-2-pro" and submit.headers["x-key"] == fake_bfl.api_key
    assert submit.json == {"prompt": "a lighthouse", "width": 1024, "height": 1024, "output_format": "png"}
    # Pending, Pending, Ready: all on the URL the submit returned (the fake serves no /v1/get_result).
    assert [(p.path, p.query["id"]) for p in fake_bfl.polls] == [
        ("/regional/eu/v1/get_result", next(iter(fake_bfl.tasks)))
    ] * 3
    assert all(p.headers["x-key"] == fake_bfl.api_key for p in fake_bfl.polls)
    (download,) = fake_bfl.downloads
    assert "x-key" not in download.headers  # a signed URL: the key stays with BFL's API
    (image,) = result.images
    assert image.mime_type == "image/png" == detect_mime(image.data)
    assert image_size(image.data) == (1024, 1024) and pixel_at(image.data)[:3] == color_for("a lighthouse")


@pytest.mark.parametrize(
    ("layout_args", "size"),
    [
        ({"aspect_ratio": "16:9", "resolution": "2K"}, (2720, 1536)),
        ({"size": "1920x1080"}, (1936, 1088)),  # multiples of 16
        ({"aspect_ratio": "9:21", "resolution": "1.5K"}, (1008, 2352)),
    ],
)
async def test_flux2_layout_is_width_and_height(
    provider: BflProvider, fake_bfl: FakeBfl, layout_args: dict[str, str], size: tuple[int, int]
) -> None:
    layout = resolve_layout(FLUX2, **layout_args)
    result = await provider.run(make_request(layout=layout))
    sent = fake_bfl.submits[0].json
    assert (sent["width"], sent["height"]) == size == (layout.width, layout.height)
    assert "aspect_ratio" not in sent
    assert image_size(result.images[0].data) == size
    assert result.images[0].mime_type == "image/jpeg"  # FLUX.2's default format, read from the bytes


async def test_seed_safety_tolerance_and_prompt_upsampling(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    request = make_request(seed=42, output_format="jpeg", options={"safety_tolerance": 4, "prompt_upsampling": False})
    result = await provider.run(request)
    sent = fake_bfl.submits[0].json
    assert (sent["seed"], sent["output_format"], sent["safety_tolerance"]) == (42, "jpeg", 4)
    assert sent["disable_pup"] is True and "prompt_upsampling" not in sent  # FLUX.2 [pro]'s own name, negated
    assert pixel_at(result.images[0].data)[:3] == pytest.approx(color_for("a red fox in snow|42"), abs=3)


async def test_flux2_reference_images_are_base64_fields(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    result = await provider.run(make_request(prompt="combine", images=(PNG, JPEG), mask=MASK))
    sent = fake_bfl.submits[0].json
    assert sent["input_image"] == base64.b64encode(PNG.data).decode()
    assert sent["input_image_2"] == base64.b64encode(JPEG.data).decode()
    assert "mask" not in sent and "input_image_3" not in sent  # the gateway composites the mask
    assert (sent["width"], sent["height"]) == (1168, 880)  # 4:3 from the first image, at 1K
    assert fake_bfl.tasks[next(iter(fake_bfl.tasks))].images == [PNG.data, JPEG.data]
    assert image_size(result.images[0].data) == (1168, 880)


async def test_kontext_edit_sends_aspect_ratio_and_one_image(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    request = make_request(
        KONTEXT, "make it night", images=(PNG,), options={"prompt_upsampling": True, "safety_tolerance": 6}
    )
    result = await provider.run(request)
    (submit,) = fake_bfl.submits
    assert submit.path == "/v1/flux-kontext-pro"
    assert submit.json == {
        "prompt": "make it night",
        "aspect_ratio": "4:3",
        "input_image": base64.b64encode(PNG.data).decode(),
        "prompt_upsampling": True,
        "safety_tolerance": 6,
    }
    assert image_size(result.images[0].data) == (1184, 880)  # the catalog's size for 4:3
    assert result.images[0].mime_type == "image/png"  # Kontext's default format


@pytest.mark.parametrize("ratio", [s.aspect_ratio for s in KONTEXT.sizes or []])
async def test_kontext_catalog_sizes_match_what_the_fake_makes(
    provider: BflProvider, fake_bfl: FakeBfl, ratio: str
) -> None:
    layout = resolve_layout(KONTEXT, aspect_ratio=ratio)
    result = await provider.run(make_request(KONTEXT, layout=layout))
    assert fake_bfl.submits[0].json["aspect_ratio"] == ratio
    assert image_size(result.images[0].data) == (layout.width, layout.height)


async def test_kontext_16_9_is_served_as_its_nearest_preferred_resolution(
    provider: BflProvider, fake_bfl: FakeBfl
) -> None:
    layout = resolve_layout(KONTEXT, aspect_ratio="16:9")
    assert [(a.param, a.applied) for a in layout.adjustments] == [("aspect_ratio", "15:8")]
    result = await provider.run(make_request(KONTEXT, layout=layout))
    assert fake_bfl.submits[0].json["aspect_ratio"] == "15:8"
    assert image_size(result.images[0].data) == (1392, 752)


async def test_extra_fields_may_add_but_not_replace(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    await provider.run(make_request(extra={"webhook_secret": "s"}))
    assert fake_bfl.submits[0].json["webhook_secret"] == "s"
    for extra in ({"width": 64}, {"input_image_3": "x"}, {"disable_pup": False}, {"prompt": "other"}):
        err = await raised(provider, make_request(extra=extra))
        assert isinstance(err, InvalidRequest) and err.code == "reserved_upstream_field"
    assert len(fake_bfl.submits) == 1


async def test_schema_rejection_is_a_400_naming_the_field(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    err = await raised(provider, make_request(extra={"bogus": 1}))
    assert isinstance(err, InvalidRequest) and err.status_code == 400 and err.code == "upstream_rejected_request"
    assert "body.bogus" in err.message


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["Content Moderated", "Request Moderated"])
async def test_moderation_is_content_policy_violation(provider: BflProvider, fake_bfl: FakeBfl, status: str) -> None:
    fake_bfl.enqueue(Moderated(status, ("Derivative Works Filter",)))
    err = await raised(provider)
    assert isinstance(err, ContentPolicyViolation) and err.status_code == 400
    assert (err.code, err.param) == ("content_policy_violation", "prompt")
    assert status in err.message and "Derivative Works Filter" in err.message
    assert fake_bfl.downloads == []


@pytest.mark.parametrize("status", ["Error", "Failed"])
async def test_failed_task_is_502(provider: BflProvider, fake_bfl: FakeBfl, status: str) -> None:
    fake_bfl.enqueue(TaskFails(status, "GPU fell over"))
    err = await raised(provider)
    assert type(err) is UpstreamError and err.status_code == 502 and err.code == "upstream_request_failed"
    assert "GPU fell over" in err.message


async def test_lost_task_is_502(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(TaskLost())
    err = await raised(provider)
    assert type(err) is UpstreamError and err.code == "upstream_task_not_found"
    assert len(fake_bfl.polls) == 1  # a 404 that names a terminal status is not retried


async def test_insufficient_credits_is_502(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(BflError(402, "Insufficient credits"))
    err = await raised(provider)
    assert isinstance(err, UpstreamAuthFailed) and err.status_code == 502 and not err.retryable
    assert err.code == "upstream_insufficient_credits" and err.upstream_status == 402
    assert "Insufficient credits" in err.message and fake_bfl.polls == []


async def test_too_many_active_tasks_is_503_with_retry_after(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(BflError(429, "Too many active tasks", retry_after_s=7))
    err = await raised(provider)
    assert isinstance(err, UpstreamRateLimited) and err.status_code == 503 and err.capacity
    assert (err.code, err.retry_after, err.upstream_status) == ("upstream_rate_limited", 7, 429)


async def test_wrong_key_is_upstream_auth_failed(fake_bfl: FakeBfl, http: httpx.AsyncClient) -> None:
    provider = BflProvider(api_key="wrong", base_url=fake_bfl.base_url, client=http)
    err = await raised(provider)
    assert isinstance(err, UpstreamAuthFailed) and err.code == "upstream_auth_failed"


async def test_transient_poll_errors_are_retried(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(PollError(503, times=2))
    result = await provider.run(make_request())
    assert len(result.images) == 1 and len(fake_bfl.polls) == 4  # 503, 503, Pending, Ready


async def test_deadline_is_504(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(Stuck())
    provider.timeout = 0.2
    err = await raised(provider)
    assert isinstance(err, UpstreamTimeout) and err.status_code == 504
    assert "did not finish within 0.2 s" in err.message and len(fake_bfl.polls) >= 2


async def test_expired_sample_is_502(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(SampleMissing())
    err = await raised(provider)
    assert type(err) is UpstreamError and "HTTP 404" in err.message


async def test_garbled_submit_answer_is_502(provider: BflProvider, fake_bfl: FakeBfl) -> None:
    fake_bfl.enqueue(MalformedJSON())
    err = await raised(provider)
    assert isinstance(err, UpstreamBadResponse) and err.code == "upstream_bad_response"


async def test_foreign_polling_url_is_refused_before_the_key_goes_there(
    provider: BflProvider, fake_bfl: FakeBfl
) -> None:
    fake_bfl.polling_host = "localhost"  # the same server under another name: not the base URL's host
    err = await raised(provider)
    assert isinstance(err, UpstreamBadResponse) and "polling_url" in err.message
    assert fake_bfl.polls == []


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.bfl.ai/v1/get_result?id=1", True),
        ("https://gateway.bfl.ai/v1/get_result?id=1", True),
        ("https://api.eu.bfl.ai/v1/get_result?id=1", True),
        ("https://bfl.ai.evil.example/v1/get_result", False),
        ("https://evil.example/?bfl.ai", False),
        ("ftp://api.bfl.ai/x", False),
    ],
)
def test_polling_url_must_stay_within_the_base_urls_domain(url: str, ok: bool) -> None:
    for base in ("https://api.bfl.ai", "https://bfl-proxy.corp.example"):  # a proxy passes BFL's URLs on
        if ok:
            check_polling_url(url, base)
        else:
            with pytest.raises(UpstreamError):
                check_polling_url(url, base)


def test_a_proxy_base_url_may_also_poll_on_its_own_host() -> None:
    check_polling_url("https://bfl-proxy.corp.example/v1/get_result?id=1", "https://bfl-proxy.corp.example")
    with pytest.raises(UpstreamError):
        check_polling_url("https://other.example/v1/get_result?id=1", "https://bfl-proxy.corp.example")


def test_unknown_terminal_detail_shapes_never_crash() -> None:
    for details in (None, "text", {"Moderation Reasons": "not a list"}, {"Moderation Reasons": [1, {"a": 2}]}, [1]):
        error = status_error({"status": "Content Moderated", "details": details})
        assert isinstance(error, ContentPolicyViolation)


# --- end to end: the openai SDK -> the gateway -> the fake --------------------------------------

AUTH = {"authorization": f"Bearer {API_KEY}"}
UPLOAD = ("in.png", solid_png(64, 48, (10, 200, 30)), "image/png")  # 4:3


def only_bfl(factory: Any, fake: FakeBfl, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(bfl_api_key=fake.api_key, bfl_base_url=fake.base_url, **settings)
    return gw


def decoded(result: Any) -> bytes:
    return base64.b64decode(result.data[0].b64_json or "")


def test_t2i_with_only_the_bfl_environment_variables(
    gateway_factory: Any, fake_bfl: FakeBfl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BFL_API_KEY", fake_bfl.api_key)
    monkeypatch.setenv("BFL_BASE_URL", fake_bfl.base_url)
    gw: RunningGateway = gateway_factory()
    response = gw.client().images.with_raw_response.generate(
        model="flux-2-pro",
        prompt="a harbour",
        size="1536x1024",
        response_format="b64_json",
        extra_body={"seed": 7, "safety_tolerance": 3, "output_format": "png"},
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "bfl"
    assert response.headers["x-imagegate-model"] == "flux-2-pro"
    sent = fake_bfl.submits[-1].json
    assert sent == {
        "prompt": "a harbour",
        "width": 1536,
        "height": 1024,
        "seed": 7,
        "output_format": "png",
        "safety_tolerance": 3,
    }
    image = decoded(result)
    assert detect_mime(image) == "image/png" and image_size(image) == (1536, 1024)
    assert pixel_at(image)[:3] == color_for("a harbour|7")
    usage = dict(result.usage.model_dump())
    assert usage["cost"] == pytest.approx(0.05) and usage["cost_estimated"] is True  # 1.57 MP: the 1.5K tier


def test_kontext_edit_sends_the_upload_as_base64(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    response = client.images.with_raw_response.edit(
        model="flux-kontext-pro", prompt="make it night", image=UPLOAD, response_format="b64_json"
    )
    result = response.parse()
    assert response.headers["x-imagegate-provider"] == "bfl"
    (submit,) = fake_bfl.submits
    assert submit.path == "/v1/flux-kontext-pro"
    assert base64.b64decode(submit.json["input_image"]) == UPLOAD[1]
    assert submit.json["aspect_ratio"] == "4:3"  # the upload's shape
    assert image_size(decoded(result)) == (1184, 880)
    assert result.model_extra["effective"]["provider"] == "bfl"
    assert dict(result.usage.model_dump())["cost"] == pytest.approx(0.04)


def test_a_format_bfl_lacks_is_converted_by_the_gateway(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    result = client.images.generate(
        model="flux-2-pro", prompt="p", response_format="b64_json", extra_body={"output_format": "webp"}
    )
    assert "output_format" not in fake_bfl.submits[-1].json
    assert detect_mime(decoded(result)) == "image/webp"


def test_out_of_range_safety_tolerance_is_a_400_before_any_task(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="flux-2-pro", prompt="p", extra_body={"safety_tolerance": 6})
    assert info.value.body["param"] == "safety_tolerance"  # type: ignore[index]
    assert fake_bfl.requests == []


def error_body(info: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = info.value.body
    assert isinstance(body, dict)
    return body


def test_moderation_is_a_400_content_policy_violation(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    fake_bfl.enqueue(Moderated("Request Moderated", ("Prompt Filter",)))
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="flux-2-pro", prompt="something forbidden")
    body = error_body(info)
    assert (body["code"], body["type"], body["param"]) == (
        "content_policy_violation",
        "invalid_request_error",
        "prompt",
    )
    assert "Prompt Filter" in body["message"]


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (BflError(402, "Insufficient credits"), 502, "upstream_insufficient_credits"),
        (BflError(429, "Too many active tasks", retry_after_s=3), 503, "upstream_rate_limited"),
    ],
)
def test_credits_and_task_limits_are_openai_style_errors(
    gateway_factory: Any, fake_bfl: FakeBfl, behaviour: BflError, status: int, code: str
) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    fake_bfl.enqueue(behaviour)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="flux-2-pro", prompt="p")
    assert info.value.status_code == status
    assert error_body(info)["code"] == code and behaviour.detail in error_body(info)["message"]
    if status == 503:
        assert info.value.response.headers["retry-after"] == "3"


def test_the_deadline_is_a_504(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    client = only_bfl(gateway_factory, fake_bfl, upstream_timeout_seconds=0.3).client()
    fake_bfl.enqueue(Stuck())
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="flux-2-pro", prompt="p")
    assert info.value.status_code == 504 and error_body(info)["code"] == "upstream_timeout"


def test_models_lists_the_flux_models_with_sizes_and_prices(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    gw = only_bfl(gateway_factory, fake_bfl)
    cards = {c["id"]: c for c in httpx.get(f"{gw.url}/v1/models", headers=AUTH).json()["data"]}
    flux2, kontext = cards["flux-2-pro"], cards["flux-kontext-pro"]
    assert flux2["available"] and kontext["available"]
    limits = {"min_side": 64, "max_side": 4096, "max_pixels": 4194304, "min_pixels": 0, "multiple_of": 16}
    assert {name: flux2["pixel_limits"][name] for name in limits} == limits
    assert flux2["max_input_images"] == 8 and flux2["resolution_tiers"] == ["1K", "1.5K", "2K"]
    assert {"aspect_ratio": "15:8", "resolution": "1K", "width": 1392, "height": 752} in kontext["sizes"]
    assert len(kontext["sizes"]) == 17
    assert kontext["aspect_ratios"][0] == "21:9" and kontext["aspect_ratios"][-1] == "9:21"
    (provider,) = flux2["providers"]
    assert (provider["id"], provider["configured"], provider["upstream_model"]) == ("bfl", True, "flux-2-pro")
    assert provider["price"]["by_resolution"] == {"1K": 0.031, "1.5K": 0.05, "2K": 0.078}
    assert provider["price"]["estimated"] is True and "bfl.ai/pricing" in provider["price"]["source"]
    assert kontext["providers"][0]["price"]["per_image"] == 0.04
    for card in (flux2, kontext):
        for name in ("safety_tolerance", "prompt_upsampling"):
            assert card["parameters"][name]["provider"] == "bfl"
        assert card["providers"][0]["parameters"]["output_format"]["handling"] == "passthrough"
    assert flux2["providers"][0]["parameters"]["prompt_upsampling"]["to"] == "disable_pup"
    assert cards["black-forest-labs/flux-2-pro"]["alias_of"] == "flux-2-pro"


def test_without_the_key_the_flux_models_are_listed_but_unavailable(gateway_factory: Any) -> None:
    gw: RunningGateway = gateway_factory()
    card = httpx.get(f"{gw.url}/v1/models/flux-2-pro", headers=AUTH).json()
    assert card["available"] is False and card["providers"][0]["configured"] is False
    with pytest.raises(openai.APIStatusError) as info:
        gw.client().images.generate(model="flux-2-pro", prompt="p")
    assert info.value.status_code == 503 and "BFL_API_KEY" in error_body(info)["message"]


def test_flux2_multi_reference_edit_with_a_mask_composited_by_the_gateway(
    gateway_factory: Any, fake_bfl: FakeBfl
) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    red, blue = solid_png(64, 64, (255, 0, 0)), solid_png(32, 32, (0, 0, 255))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # left half opaque: keep; right half: edit
    mask.paste((0, 0, 0, 255), (0, 0, 32, 64))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    result = client.images.edit(
        model="flux-2-pro",
        prompt="paint",
        image=[("a.png", red, "image/png"), ("b.png", blue, "image/png")],
        mask=("m.png", buffer.getvalue(), "image/png"),
        response_format="b64_json",
        output_format="png",
    )
    sent = fake_bfl.submits[-1].json
    assert [base64.b64decode(sent[f]) for f in ("input_image", "input_image_2")] == [red, blue]
    assert "mask" not in sent and (sent["width"], sent["height"]) == (1024, 1024)
    out = decoded(result)
    assert pixel_at(out, 100, 512)[:3] == (255, 0, 0)  # kept from the original
    assert pixel_at(out, 900, 512)[:3] == color_for("paint")  # FLUX's edit


def test_n_is_one_task_per_image(gateway_factory: Any, fake_bfl: FakeBfl) -> None:
    client = only_bfl(gateway_factory, fake_bfl).client()
    result = client.images.generate(
        model="flux-kontext-pro", prompt="p", n=2, response_format="b64_json", extra_body={"seed": 10}
    )
    assert len(result.data) == 2 and len(fake_bfl.submits) == 2
    assert sorted(s.json["seed"] for s in fake_bfl.submits) == [10, 11]
    assert dict(result.usage.model_dump())["cost"] == pytest.approx(0.08)


# --- catalog <-> wire drift: every path a binding declares is where the value lands --------------

DRIFT_ARGUMENTS: dict[str, dict[str, Any]] = {
    "prompt": {},
    "seed": {"seed": 3},
    "output_format": {"output_format": "png"},
    "safety_tolerance": {"options": {"safety_tolerance": 1}},
    "prompt_upsampling": {"options": {"prompt_upsampling": False}},
    "image": {"images": (PNG,)},
    "size": {},
    "aspect_ratio": {},
    "resolution": {},
}
SENT = [
    (model.id, name)
    for model in MODELS.values()
    for name, handling in model.providers["bfl"].parameters.items()
    if handling.handling in ("passthrough", "renamed", "converted")
]


def test_every_sent_parameter_has_a_drift_case() -> None:
    assert {name for _, name in SENT} <= set(DRIFT_ARGUMENTS)


@pytest.mark.parametrize(("model_id", "param"), SENT)
async def test_declared_paths_are_in_the_body(
    provider: BflProvider, fake_bfl: FakeBfl, model_id: str, param: str
) -> None:
    model = MODELS[model_id]
    await provider.run(make_request(model, **DRIFT_ARGUMENTS[param]))
    body = fake_bfl.submits[0].json
    paths = model.providers["bfl"].parameters[param].paths
    # An image goes to as many of its fields as there are images: the first one at least.
    present = [path for path in paths if path in body]
    assert present == list(paths[:1] if param == "image" else paths), (param, sorted(body))
