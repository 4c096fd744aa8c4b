"""Acceptance-audit findings: odd inputs that must be a 400 (never a 500 or a dropped connection),
and spec behaviours (keep the first image's shape, never drop n silently, revised_prompt per image).

Tests marked xfail(strict=True) document real bugs in src/ and fail today; the others pass and
pin behaviour that had no test yet.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from ..conftest import API_KEY, RunningGateway
from ..fakes.common import RawResponse
from ..fakes.gemini import FakeGemini
from ..fakes.images import solid_png
from ..fakes.openai_upstream import FakeOpenAI

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def post_json(gateway: RunningGateway, body: Any, path: str = "/v1/images/generations") -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=AUTH, timeout=30)


def post_raw(gateway: RunningGateway, raw: str, path: str = "/v1/images/generations") -> httpx.Response:
    return httpx.post(
        gateway.url + path, content=raw.encode(), timeout=30, headers=AUTH | {"content-type": "application/json"}
    )


def post_form(gateway: RunningGateway, fields: dict[str, str], image: bytes) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/images/edits",
        data=fields,
        headers=AUTH,
        timeout=30,
        files=[("image", ("a.png", image, "image/png"))],
    )


def assert_400(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def png(width: int = 64, height: int = 48) -> bytes:
    return solid_png(width, height, (10, 20, 30))


# --- non-finite numbers: int(nan) / int(inf) in params._number ------------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"prompt":"p","seed":NaN}', "seed"),
        ('{"prompt":"p","seed":Infinity}', "seed"),
        ('{"prompt":"p","n":1e400}', "n"),
        ('{"prompt":"p","output_compression":-Infinity}', "output_compression"),
    ],
)
def test_non_finite_json_numbers_are_400(gateway: RunningGateway, raw: str, param: str) -> None:
    assert_400(post_raw(gateway, raw), param)


@pytest.mark.parametrize(("field", "value"), [("seed", "nan"), ("n", "inf"), ("output_compression", "NaN")])
def test_non_finite_form_numbers_are_400(gateway: RunningGateway, field: str, value: str) -> None:
    assert_400(post_form(gateway, {"prompt": "p", field: value}, png()), field)


# --- malformed image URLs: urlsplit().port / IDNA errors escape fetch.fetch_image_url -----------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:99999/a.png",
        "http://example.com:abc/a.png",
        "http://[::1/a.png",
        "http://" + "a" * 300 + ".com/a.png",
    ],
)
def test_malformed_image_urls_are_400_naming_the_field(gateway_factory: Any, fake_gemini: FakeGemini, url: str) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, allow_private_urls=False
    )  # the default: host names are resolved and checked
    response = post_json(gw, {"model": MODEL, "prompt": "p", "images": [{"image_url": url}]}, "/v1/images/edits")
    assert_400(response, "images")


# --- deeply nested JSON: RecursionError is not caught by read_json ---------------------------


def test_deeply_nested_json_is_400_invalid_json(gateway: RunningGateway) -> None:
    depth = 100_000
    response = post_raw(gateway, '{"prompt":"p","x":' + "[" * depth + "]" * depth + "}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


# --- user text copied into the x-imagegate-adjusted header ----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "p", "size": "1024x1024", "aspect_ratio": "\u65e5\u672c"},  # ignored, never parsed
        {"prompt": "p", "aspect_ratio": "\u0667:\u0661"},  # Arabic-Indic 7:1, parsed by \\d, mapped to 21:9
    ],
)
def test_non_latin1_adjusted_values_do_not_500(gateway: RunningGateway, body: dict[str, Any]) -> None:
    response = post_json(gateway, {"model": MODEL, **body})
    assert response.status_code in (200, 400), response.text


def test_newline_inside_a_ratio_does_not_drop_the_connection(gateway: RunningGateway) -> None:
    try:
        response = post_json(gateway, {"model": MODEL, "prompt": "p", "aspect_ratio": "7\n:1"})
    except httpx.HTTPError as exc:  # RemoteProtocolError today
        pytest.fail(f"no HTTP answer: {exc!r}")
    assert response.status_code in (200, 400)
    assert "\n" not in response.headers.get("x-imagegate-adjusted", "")


# --- edit keeps the first image's shape: as displayed (EXIF orientation) ------------------------


def test_edit_keeps_the_displayed_shape_of_an_exif_rotated_photo(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 800x600, shown 600x800 (portrait)
    Image.new("RGB", (800, 600), (50, 60, 70)).save(buf, format="JPEG", exif=exif.tobytes())
    response = httpx.post(
        gateway.url + "/v1/images/edits",
        data={"prompt": "p"},
        headers=AUTH,
        timeout=30,
        files=[("image", ("photo.jpg", buf.getvalue(), "image/jpeg"))],
    )
    assert response.status_code == 200, response.text
    assert response.json()["effective"]["aspect_ratio"] == "3:4"


# --- n is never dropped silently ----------------------------------------------------------------


def _openai_body(count: int, texts: list[str] | None = None) -> str:
    data = [
        {"b64_json": base64.b64encode(png(1365, 768)).decode(), "revised_prompt": (texts[i] if texts else None)}
        for i in range(count)
    ]
    return json.dumps({"created": 1, "data": data})


def test_fewer_images_than_n_from_upstream_is_reported(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    gw = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    fake_openai.enqueue(RawResponse(200, _openai_body(1), content_type="application/json"))
    response = post_json(gw, {"model": MODEL, "prompt": "p", "n": 3, "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 1
    assert any(a["param"] == "n" for a in body["adjustments"])
    assert "n=" in response.headers.get("x-imagegate-adjusted", "")


# --- revised_prompt belongs to its own image --------------------------------------------------


def _gemini_body(text: str, color: tuple[int, int, int]) -> str:
    image = base64.b64encode(solid_png(1024, 1024, color)).decode()
    return json.dumps(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"text": text}, {"inlineData": {"mimeType": "image/png", "data": image}}],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1},
        }
    )


def test_each_image_carries_the_text_of_its_own_call(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(
        RawResponse(200, _gemini_body("first text", (255, 0, 0)), content_type="application/json"),
        RawResponse(200, _gemini_body("second text", (0, 0, 255)), content_type="application/json"),
    )
    response = post_json(gateway, {"model": MODEL, "prompt": "p", "n": 2, "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    assert {d["revised_prompt"] for d in response.json()["data"]} == {"first text", "second text"}


# --- behaviour that works and had no end-to-end test --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://0.0.0.0/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://0x7f000001/a.png",
        "http://localhost/a.png",
        "http://169.254.169.254/latest/meta-data",
    ],
)
def test_disguised_loopback_and_metadata_urls_are_refused(
    gateway_factory: Any, fake_gemini: FakeGemini, url: str
) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, allow_private_urls=False
    )
    response = post_json(gw, {"model": MODEL, "prompt": "p", "images": [{"image_url": url}]}, "/v1/images/edits")
    assert_400(response, "images")
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert fake_gemini.requests == []


def test_unparseable_values_beside_a_winning_size_are_still_400(gateway: RunningGateway) -> None:
    """size WxH wins, but a typo in aspect_ratio/resolution is still the client's error, not dropped."""
    for extra, param in (({"aspect_ratio": "0:5"}, "aspect_ratio"), ({"resolution": "ultra"}, "resolution")):
        response = post_json(gateway, {"model": MODEL, "prompt": "p", "size": "1024x1024"} | extra)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_garbled_upstream_token_counts_count_as_zero(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    """The image is fine; only the usage figure is garbled, and it is informational."""
    body = json.loads(_gemini_body("t", (1, 2, 3)))
    body["usageMetadata"] = {"promptTokenCount": "many", "candidatesTokenCount": 1}
    fake_gemini.enqueue(RawResponse(200, json.dumps(body), content_type="application/json"))
    response = post_json(gateway, {"model": MODEL, "prompt": "p", "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    assert (response.json()["usage"]["input_tokens"], response.json()["usage"]["output_tokens"]) == (0, 1)
