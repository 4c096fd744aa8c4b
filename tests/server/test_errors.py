"""Every failure answers in OpenAI's error shape with a fitting status, through the SDK too."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.common import Hang, MalformedJSON, RawResponse
from ..fakes.gemini import FakeGemini, FinishBlocked, GeminiError, PromptBlocked, TextOnly

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def post(gateway: RunningGateway, body: Any, path: str = "/v1/images/generations", **kw: Any) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=AUTH | kw.pop("headers", {}), timeout=30, **kw)


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    if error_type is not None:
        assert error["type"] == error_type
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": "   "}, "prompt"),
        ({"model": MODEL, "prompt": "p", "size": "banana"}, "size"),
        ({"model": MODEL, "prompt": "p", "size": "0x100"}, "size"),
        ({"model": MODEL, "prompt": "p", "aspect_ratio": "0:5"}, "aspect_ratio"),
        ({"model": MODEL, "prompt": "p", "resolution": "ultra"}, "resolution"),
        ({"model": MODEL, "prompt": "p", "n": 0}, "n"),
        ({"model": MODEL, "prompt": "p", "n": 11}, "n"),
        ({"model": MODEL, "prompt": "p", "n": "two"}, "n"),
        ({"model": MODEL, "prompt": "p", "n": 1.5}, "n"),
        ({"model": MODEL, "prompt": "p", "response_format": "jpeg"}, "response_format"),
        ({"model": MODEL, "prompt": "p", "output_format": "bmp"}, "output_format"),
        ({"model": MODEL, "prompt": "p", "output_compression": 101}, "output_compression"),
        ({"model": MODEL, "prompt": "p", "seed": "abc"}, "seed"),
        ({"model": MODEL, "prompt": "p", "safety_tolerance": "9"}, "safety_tolerance"),
        ({"model": MODEL, "prompt": "p", "enable_web_search": "maybe"}, "enable_web_search"),
        ({"model": MODEL, "prompt": "p", "image": "http://x/a.png"}, "image"),
    ],
)
def test_bad_parameters_are_400_naming_the_param(
    gateway: RunningGateway, fake_gemini: FakeGemini, body: dict[str, Any], param: str
) -> None:
    assert_error(post(gateway, body), 400, param=param, error_type="invalid_request_error")
    assert fake_gemini.requests == []  # rejected before any upstream call


STANDARD_FIELDS = [
    ("quality", "high"),
    ("style", "vivid"),
    ("background", "transparent"),
    ("moderation", "low"),
    ("input_fidelity", "high"),
]


@pytest.mark.parametrize("param,value", STANDARD_FIELDS)
def test_standard_fields_the_model_lacks_are_not_applied_and_reported(
    gateway: RunningGateway, fake_gemini: FakeGemini, param: str, value: Any
) -> None:
    response = post(gateway, {"model": MODEL, "prompt": "p", "response_format": "b64_json", param: value})
    assert response.status_code == 200, response.text
    shown = str(value).lower()
    assert {"param": param, "requested": shown, "applied": f"not applied (model {MODEL} lacks it)"} in response.json()[
        "adjustments"
    ]
    assert f"{param}={shown}->not applied" in response.headers["x-imagegate-adjusted"]
    assert param not in json.dumps(fake_gemini.requests[-1].json)  # never forwarded as pass-through


@pytest.mark.parametrize("param,value", STANDARD_FIELDS)
def test_strict_parameters_make_fields_the_model_lacks_400_naming_param_and_model(
    gateway_factory: Any, fake_gemini: FakeGemini, param: str, value: Any
) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, strict_parameters=True
    )
    error = assert_error(
        post(gw, {"model": MODEL, "prompt": "p", param: value}), 400, param=param, code="unsupported_parameter"
    )
    assert MODEL in error["message"]
    assert fake_gemini.requests == []


def test_default_value_of_unavailable_parameter_is_accepted_and_reported(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    response = post(
        gateway, {"model": MODEL, "prompt": "p", "stream": False, "quality": "auto", "response_format": "b64_json"}
    )
    assert response.status_code == 200
    header = response.headers["x-imagegate-adjusted"]
    assert "quality=auto->ignored (not available on this model)" in header
    assert "stream=" not in header  # the gateway's own field (it streams for every model): nothing to say


def test_sdk_raises_typed_errors(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model=MODEL, prompt="p", size="banana")  # type: ignore[arg-type]
    assert bad.value.param == "size"
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="no-such-model", prompt="p")
    assert missing.value.code == "model_not_found"


def test_invalid_json_and_wrong_content_type(gateway: RunningGateway) -> None:
    response = httpx.post(
        gateway.url + "/v1/images/generations",
        content=b"{not json",
        headers=AUTH | {"content-type": "application/json"},
    )
    assert_error(response, 400, code="invalid_json")
    response = httpx.post(
        gateway.url + "/v1/images/generations", content=b"[1, 2]", headers=AUTH | {"content-type": "application/json"}
    )
    assert_error(response, 400, code="invalid_json")
    response = httpx.post(gateway.url + "/v1/images/generations", data={"prompt": "p"}, headers=AUTH)
    assert_error(response, 400, code="unsupported_content_type")


def test_unknown_route_and_method(gateway: RunningGateway) -> None:
    assert_error(httpx.get(gateway.url + "/v1/nothing", headers=AUTH), 404)
    assert_error(httpx.get(gateway.url + "/v1/images/generations", headers=AUTH), 405)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/images/generations", "POST"),
        ("TRACE", "/openai/v1/images/edits", "POST"),
        ("PUT", "/v1/admin/keys", "GET, HEAD, POST"),  # two routes share the path
        ("POST", "/v1/admin/keys/key_x", "DELETE, GET, HEAD, PATCH"),
        ("DELETE", "/health", "GET, HEAD"),
        ("TRACE", "/", "GET, HEAD"),
    ],
)
def test_a_405_says_which_methods_the_path_allows(gateway: RunningGateway, method: str, path: str, allow: str) -> None:
    """RFC 9110 15.5.6: a 405 must carry Allow (schemathesis's unsupported_method check found none)."""
    response = httpx.request(method, gateway.url + path, headers=AUTH)
    assert_error(response, 405)
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (PromptBlocked("SAFETY", "blocked"), 400, "content_policy_violation"),
        (PromptBlocked("PROHIBITED_CONTENT"), 400, "content_policy_violation"),
        (FinishBlocked("IMAGE_SAFETY", "unsafe"), 400, "content_policy_violation"),
        (FinishBlocked("NO_IMAGE"), 502, "no_image_generated"),
        (TextOnly("just words"), 502, "no_image_generated"),
        (GeminiError(429, "RESOURCE_EXHAUSTED", "quota", retry_after_s=23), 503, "upstream_rate_limited"),
        (GeminiError(503, "UNAVAILABLE", "The model is overloaded."), 503, "upstream_unavailable"),
        (GeminiError(500, "INTERNAL", "oops"), 502, "upstream_error"),
        (GeminiError(504, "DEADLINE_EXCEEDED", "slow"), 504, "upstream_timeout"),
        (GeminiError(400, "INVALID_ARGUMENT", "bad"), 400, "upstream_rejected_request"),
        (MalformedJSON(), 502, "upstream_bad_response"),
        (RawResponse(502, "<html>bad gateway</html>"), 502, "upstream_error"),
    ],
)
def test_upstream_failures_map_to_openai_errors(
    gateway: RunningGateway, fake_gemini: FakeGemini, behaviour: Any, status: int, code: str
) -> None:
    fake_gemini.enqueue(behaviour)
    response = post(gateway, {"model": MODEL, "prompt": "p"})
    assert_error(response, status, code=code)
    assert "x-imagegate-adjusted" not in response.headers


def test_rate_limit_carries_retry_after(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(GeminiError(429, "RESOURCE_EXHAUSTED", "quota", retry_after_s=23))
    response = post(gateway, {"model": MODEL, "prompt": "p"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "23"


def test_upstream_key_rejected_is_502_not_401(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(gemini_api_key="wrong-key", gemini_base_url=fake_gemini.base_url)
    assert_error(post(gw, {"model": MODEL, "prompt": "p"}), 502, code="upstream_auth_failed")


def test_hanging_upstream_times_out_with_504(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, upstream_timeout_seconds=0.5
    )
    fake_gemini.enqueue(Hang(30))
    started = time.monotonic()
    assert_error(post(gw, {"model": MODEL, "prompt": "p"}), 504, code="upstream_timeout")
    assert time.monotonic() - started < 5


def test_unreachable_upstream_is_503(gateway_factory: Any) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = gateway_factory(gemini_api_key="k", gemini_base_url=f"http://127.0.0.1:{port}")
    assert_error(post(gw, {"model": MODEL, "prompt": "p"}), 503, code="upstream_connection_error")


def test_no_provider_configured(gateway_factory: Any) -> None:
    gw = gateway_factory()
    error = assert_error(post(gw, {"model": MODEL, "prompt": "p"}), 503, code="provider_not_configured")
    assert "GEMINI_API_KEY" in error["message"]


def test_server_survives_a_burst_of_bad_requests(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    bodies: list[Any] = [None, 1, "x", [], {"prompt": {"nested": 1}}, {"n": None, "prompt": "p", "size": 5}]
    for body in bodies:
        response = httpx.post(gateway.url + "/v1/images/generations", json=body, headers=AUTH)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert "error" in response.json()
    assert post(gateway, {"model": MODEL, "prompt": "still alive", "response_format": "b64_json"}).status_code == 200


def test_image_broken_after_its_header_is_a_502_when_it_must_be_decoded(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    """Only the head of an upstream image is checked on arrival; a broken rest surfaces as soon
    as the gateway needs the bytes (hosting, conversion) and is the upstream's fault."""
    import base64
    import io
    import json
    import os

    from PIL import Image

    noise = io.BytesIO()
    Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)).save(noise, format="PNG")
    good = base64.b64encode(noise.getvalue()).decode()
    assert len(good) > 4 * 64 * 1024  # longer than the head the gateway checks on arrival
    broken = good[: len(good) // 2] + "!!!!" + good[len(good) // 2 + 4 :]
    body = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": broken}}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ]
    }
    fake_gemini.enqueue(RawResponse(200, json.dumps(body), content_type="application/json"))
    assert_error(
        post(gateway, {"model": MODEL, "prompt": "p", "response_format": "url"}), 502, code="upstream_bad_response"
    )
