"""images/generations end to end: the official openai SDK -> gateway -> fake Gemini over loopback."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from ..conftest import RunningGateway
from ..fakes.gemini import Delay, FakeGemini, GeminiError
from ..fakes.images import color_for, detect_mime, image_size, pixel_at

MODEL = "gemini-3-pro-image-preview"
FORMAT_MIME = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp", "avif": "image/avif"}


def image_config(fake: FakeGemini, index: int = -1) -> dict[str, Any]:
    return fake.requests[index].json["generationConfig"]["imageConfig"]


def usage_of(result: Any) -> dict[str, Any]:
    """`usage` with imagegate's fields (the SDK types it, extra fields included)."""
    return dict(result.usage.model_dump())


def sniff(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        return str(img.format).lower()


def test_spec_example_returns_a_hosted_url_and_revised_prompt(
    client: OpenAI, gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    result = client.images.generate(model=MODEL, prompt="a lighthouse", size="1024x1024")

    assert len(result.data) == 1
    item = result.data[0]
    assert item.url is not None and item.url.startswith(gateway.url + "/v1/results/")
    assert item.revised_prompt == "Here is your image: a lighthouse"
    downloaded = httpx.get(item.url)
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert image_size(downloaded.content) == (1024, 1024)
    # No response_format: the same image comes inline too (IMAGEGATE_DEFAULT_RESPONSE_FORMAT=both).
    assert base64.b64decode(item.b64_json or "") == downloaded.content
    assert image_config(fake_gemini) == {"aspectRatio": "1:1", "imageSize": "1K"}


def test_thought_images_are_skipped(client: OpenAI, fake_gemini: FakeGemini) -> None:
    result = client.images.generate(model=MODEL, prompt="skip thoughts", response_format="b64_json")
    data = base64.b64decode(result.data[0].b64_json or "")
    assert image_size(data) == (1024, 1024)  # not the 8x8 thought image
    assert pixel_at(data)[:3] == color_for("skip thoughts")


def test_extra_body_aspect_ratio_and_resolution(client: OpenAI, fake_gemini: FakeGemini) -> None:
    result = client.images.generate(
        model=MODEL, prompt="wide", response_format="b64_json", extra_body={"aspect_ratio": "16:9", "resolution": "2K"}
    )
    assert image_config(fake_gemini) == {"aspectRatio": "16:9", "imageSize": "2K"}
    effective = result.model_extra["effective"]
    assert (effective["aspect_ratio"], effective["resolution"]) == ("16:9", "2K")
    assert (effective["width"], effective["height"]) == (2731, 1536)
    assert result.model_extra["adjustments"] == []


def test_mapped_values_are_reported_in_header_and_body(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = gateway.client().images.with_raw_response.generate(
        model=MODEL, prompt="p", response_format="b64_json", extra_body={"aspect_ratio": "7:1", "resolution": "3K"}
    )
    header = response.headers["x-imagegate-adjusted"]
    assert "aspect_ratio=7:1->21:9" in header
    assert "resolution=3K->4K" in header
    assert response.headers["x-imagegate-provider"] == "gemini"
    assert response.headers["x-imagegate-model"] == MODEL
    assert response.headers["x-request-id"]
    body = response.parse()
    assert {"param": "aspect_ratio", "requested": "7:1", "applied": "21:9"} in body.model_extra["adjustments"]
    assert image_config(fake_gemini) == {"aspectRatio": "21:9", "imageSize": "4K"}


def test_size_wxh_wins_and_ignored_values_are_reported(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = gateway.client().images.with_raw_response.generate(
        model=MODEL,
        prompt="p",
        size="1920x1080",
        response_format="b64_json",
        extra_body={"aspect_ratio": "1:1", "resolution": "4K"},
    )
    header = response.headers["x-imagegate-adjusted"]
    assert "aspect_ratio=1:1->ignored (size takes precedence)" in header
    assert "resolution=4K->ignored (size takes precedence)" in header
    assert "size=1920x1080->1365x768" in header
    assert image_config(fake_gemini) == {"aspectRatio": "16:9", "imageSize": "1K"}
    effective = response.parse().model_extra["effective"]
    assert (effective["width"], effective["height"]) == (1365, 768)


def test_no_adjustment_header_when_nothing_changed(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = gateway.client().images.with_raw_response.generate(
        model=MODEL, prompt="p", size="2048x2048", response_format="b64_json"
    )
    assert "x-imagegate-adjusted" not in response.headers


@pytest.mark.parametrize("fmt", ["png", "jpeg", "gif", "webp", "avif"])
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_every_output_format_as_url_and_b64(
    client: OpenAI, fake_gemini: FakeGemini, fmt: str, response_format: str
) -> None:
    result = client.images.generate(
        model=MODEL,
        prompt=f"format {fmt}",
        output_format=fmt,  # type: ignore[arg-type]
        response_format=response_format,
    )  # type: ignore[arg-type]
    if response_format == "url":
        assert result.data[0].b64_json is None
        downloaded = httpx.get(result.data[0].url or "")
        assert downloaded.headers["content-type"] == FORMAT_MIME[fmt]
        assert downloaded.url.path.endswith("." + fmt)
        data = downloaded.content
    else:
        assert result.data[0].url is None
        data = base64.b64decode(result.data[0].b64_json or "")
    assert sniff(data) == fmt
    assert image_size(data) == (1024, 1024)
    assert result.model_extra["effective"]["output_format"] == fmt
    assert result.output_format == fmt


def test_upstream_format_passes_through_unconverted(client: OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.output_mime = "image/jpeg"
    result = client.images.generate(model=MODEL, prompt="jpeg native", response_format="b64_json")
    assert detect_mime(base64.b64decode(result.data[0].b64_json or "")) == "image/jpeg"
    assert result.model_extra["effective"]["output_format"] == "jpeg"
    # Asking for what the upstream already sends returns its bytes untouched.
    result = client.images.generate(model=MODEL, prompt="jpeg native", response_format="b64_json", output_format="jpeg")
    again = base64.b64decode(result.data[0].b64_json or "")
    upstream = fake_gemini.requests[-1]
    assert detect_mime(again) == "image/jpeg" and upstream is not None


def test_output_compression_changes_lossy_encoding(client: OpenAI, fake_gemini: FakeGemini) -> None:
    sizes = {}
    for level in (5, 100):
        result = client.images.generate(
            model=MODEL, prompt="compress", response_format="b64_json", output_format="jpeg", output_compression=level
        )
        sizes[level] = len(base64.b64decode(result.data[0].b64_json or ""))
    assert sizes[5] < sizes[100]


def test_n_runs_in_parallel_with_seeds_and_summed_usage(client: OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(*[Delay(0.6)] * 4)
    started = time.monotonic()
    result = client.images.generate(
        model=MODEL, prompt="many", n=4, response_format="b64_json", extra_body={"seed": 100}
    )
    elapsed = time.monotonic() - started

    assert len(result.data) == 4
    assert fake_gemini.max_concurrency == 4
    assert elapsed < 4 * 0.6  # sequential calls would take at least 2.4 s
    seeds = sorted(r.json["generationConfig"]["seed"] for r in fake_gemini.requests)
    assert seeds == [100, 101, 102, 103]
    colors = {pixel_at(base64.b64decode(d.b64_json or ""))[:3] for d in result.data}
    assert colors == {color_for(f"many{s}") for s in seeds}
    usage = usage_of(result)
    assert usage["images"] == 4
    assert usage["cost"] == pytest.approx(4 * 0.134)  # the Gemini API's standard 1K price
    assert usage["input_tokens"] == 4 * 17
    assert result.model_extra["effective"]["seed"] == 100


def test_n_partial_failure_returns_what_succeeded_and_says_so(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "boom"))
    response = gateway.client().images.with_raw_response.generate(
        model=MODEL, prompt="p", n=3, response_format="b64_json"
    )
    result = response.parse()
    assert len(result.data) == 2
    assert usage_of(result)["images"] == 2
    assert usage_of(result)["cost"] == pytest.approx(2 * 0.134)
    assert "n=3->2 (1 upstream calls failed)" in response.headers["x-imagegate-adjusted"]


def test_n_failure_policy_fail_turns_partial_into_error(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, n_failure_policy="fail"
    )
    fake_gemini.enqueue(GeminiError(503, "UNAVAILABLE", "overloaded"))
    response = httpx.post(
        f"{gw.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "p", "n": 2},
        headers={"authorization": "Bearer sk-test-gateway"},
        timeout=30,
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_seed_and_provider_options_reach_gemini(client: OpenAI, fake_gemini: FakeGemini) -> None:
    client.images.generate(
        model=MODEL,
        prompt="grounded",
        response_format="b64_json",
        extra_body={"seed": 42, "enable_web_search": True, "safety_filter_level": "block_only_high"},
    )
    body = fake_gemini.requests[-1].json
    assert body["generationConfig"]["seed"] == 42
    assert body["tools"] == [{"google_search": {}}]
    assert {s["threshold"] for s in body["safetySettings"]} == {"BLOCK_ONLY_HIGH"}


def test_unknown_parameters_pass_straight_through(client: OpenAI, fake_gemini: FakeGemini) -> None:
    client.images.generate(
        model=MODEL,
        prompt="p",
        response_format="b64_json",
        extra_body={"generationConfig": {"temperature": 0.4}, "systemInstruction": {"parts": [{"text": "be brief"}]}},
    )
    body = fake_gemini.requests[-1].json
    assert body["generationConfig"]["temperature"] == 0.4
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "1K"}
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}


def test_sync_mode_returns_data_uris_and_stores_nothing(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    result = gateway.client().images.generate(
        model=MODEL, prompt="p", response_format="url", extra_body={"sync_mode": True}
    )
    url = result.data[0].url or ""
    assert url.startswith("data:image/png;base64,") and result.data[0].b64_json is None
    assert image_size(base64.b64decode(url.split(",", 1)[1])) == (1024, 1024)
    both = gateway.client().images.generate(model=MODEL, prompt="p", extra_body={"sync_mode": True})
    assert (both.data[0].url or "").startswith("data:image/png;base64,")
    assert base64.b64decode(both.data[0].b64_json or "") == base64.b64decode((both.data[0].url or "").split(",", 1)[1])
    as_b64 = gateway.client().images.generate(
        model=MODEL, prompt="p", response_format="b64_json", extra_body={"sync_mode": True}
    )
    assert as_b64.data[0].b64_json and as_b64.data[0].url is None
    results_dir = gateway.settings.data_dir / "results"
    assert not any(results_dir.iterdir())


def test_limit_generations_false_returns_every_image(client: OpenAI, fake_gemini: FakeGemini) -> None:
    fake_gemini.images_per_response = 3
    assert len(client.images.generate(model=MODEL, prompt="p", response_format="b64_json").data) == 1
    result = client.images.generate(
        model=MODEL, prompt="p", response_format="b64_json", extra_body={"limit_generations": False}
    )
    assert len(result.data) == 3


def test_openai_prefixed_path_and_curl_style_request(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = httpx.post(
        f"{gateway.url}/openai/v1/images/generations",
        headers={"Authorization": "Bearer sk-test-gateway", "Content-Type": "application/json"},
        json={"model": MODEL, "prompt": "", "size": "1024x1024"} | {"prompt": "curl"},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"created", "data", "usage", "effective"}
    assert body["data"][0]["url"].startswith(gateway.url)


def test_results_expire(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, result_ttl_seconds=0.5
    )
    url = gw.client().images.generate(model=MODEL, prompt="short-lived").data[0].url or ""
    assert httpx.get(url).status_code == 200
    time.sleep(0.7)
    expired = httpx.get(url)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "result_not_found"
    unknown = httpx.get(gw.url + "/v1/results/not-a-token.png")
    assert unknown.status_code == 404


def test_default_model_is_the_flagship(client: OpenAI, fake_gemini: FakeGemini) -> None:
    result = client.images.generate(prompt="no model given", response_format="b64_json")
    assert result.model_extra["effective"]["model"] == MODEL
    assert fake_gemini.requests[-1].model == "gemini-3-pro-image"  # the binding's upstream id


def test_seeds_for_n_wrap_inside_the_int32_range(client: OpenAI, fake_gemini: FakeGemini) -> None:
    client.images.generate(model=MODEL, prompt="edge", n=2, response_format="b64_json", extra_body={"seed": 2**31 - 1})
    assert sorted(r.json["generationConfig"]["seed"] for r in fake_gemini.requests) == [0, 2**31 - 1]
    with pytest.raises(Exception) as info:
        client.images.generate(model=MODEL, prompt="edge", extra_body={"seed": 2**31})
    assert getattr(info.value, "param", None) == "seed"


def test_output_compression_on_a_lossless_format_is_reported(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = gateway.client().images.with_raw_response.generate(
        model=MODEL, prompt="p", response_format="b64_json", output_format="png", output_compression=40
    )
    assert "output_compression=40->ignored (png is lossless)" in response.headers["x-imagegate-adjusted"]


def test_output_compression_without_format_recompresses_a_lossy_upstream(
    client: OpenAI, fake_gemini: FakeGemini
) -> None:
    fake_gemini.output_mime = "image/jpeg"
    plain = client.images.generate(model=MODEL, prompt="q", response_format="b64_json")
    squeezed = client.images.generate(model=MODEL, prompt="q", response_format="b64_json", output_compression=1)
    plain_bytes = base64.b64decode(plain.data[0].b64_json or "")
    squeezed_bytes = base64.b64decode(squeezed.data[0].b64_json or "")
    assert detect_mime(squeezed_bytes) == "image/jpeg"
    assert squeezed_bytes != plain_bytes


def test_wildcard_bind_without_public_url_uses_the_request_host(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        host="0.0.0.0",
        port=1,
        public_url=None,
    )
    gw.settings.public_url = None  # the factory fills it in; this gateway must work it out itself
    url = gw.client().images.generate(model=MODEL, prompt="p").data[0].url or ""
    assert url.startswith(gw.url + "/v1/results/")
    assert httpx.get(url).status_code == 200
