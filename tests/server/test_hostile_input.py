"""Hostile input never makes a 500: client mistakes are 400s naming the field, sent before any
upstream call; hostile upstreams are 502s (or 503/504 for what they say about capacity).

Also end to end: pass-through parameters cannot replace what the gateway builds (a 4K image
billed and reported as 1K), and snake_case proto-JSON does not get around that.
"""

from __future__ import annotations

import gc
import json
import warnings
from typing import Any

import httpx
import openai
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.fal import FakeFal, OnResult
from ..fakes.gemini import FakeGemini
from ..fakes.hostile import deeply_nested_json, gemini_image, google_retry_delay, json_answer
from ..fakes.images import solid_png
from ..fakes.openai_upstream import FakeOpenAI
from ..fakes.replicate import FakeReplicate
from .test_errors import assert_error

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}
PNG = solid_png(16, 16, (9, 9, 9))


def post_raw(
    gateway: RunningGateway,
    content: bytes | str,
    content_type: str = "application/json",
    path: str = "/v1/images/generations",
) -> httpx.Response:
    body = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    return httpx.post(gateway.url + path, content=body, timeout=30, headers=AUTH | {"content-type": content_type})


def multipart(
    parts: list[tuple[bytes, bytes]],
    *,
    boundary: bytes = b"b0undary",
    charset: str | None = None,
) -> tuple[bytes, str]:
    """A multipart body from (part headers, part data) as raw bytes; an image part is added."""
    image = (b'Content-Disposition: form-data; name="image[]"; filename="a.png"\r\nContent-Type: image/png', PNG)
    chunks = []
    for headers, data in [*parts, image]:
        chunks.append(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n")
    chunks.append(b"--" + boundary + b"--\r\n")
    content_type = f"multipart/form-data; boundary={boundary.decode()}" + (f"; charset={charset}" if charset else "")
    return b"".join(chunks), content_type


def field(name: bytes, value: bytes, content_type: bytes | None = None) -> tuple[bytes, bytes]:
    headers = b'Content-Disposition: form-data; name="' + name + b'"'
    if content_type is not None:
        headers += b"\r\nContent-Type: " + content_type
    return headers, value


def base_fields() -> list[tuple[bytes, bytes]]:
    return [field(b"model", MODEL.encode()), field(b"prompt", b"p")]


# --- pass-through cannot override the gateway ---------------------------------------------------


@pytest.mark.parametrize(
    "extra_body",
    [
        {"generationConfig": {"imageConfig": {"imageSize": "4K"}}},
        {"generation_config": {"image_config": {"image_size": "4K"}}},
    ],
)
def test_imageconfig_pass_through_is_400_and_nothing_is_sent(
    client: openai.OpenAI, fake_gemini: FakeGemini, extra_body: dict[str, Any]
) -> None:
    """Today's bug: this made a 4K image that was billed and reported as 1K."""
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=MODEL, prompt="a lighthouse", extra_body=extra_body)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == next(iter(extra_body)) and error["code"] == "reserved_upstream_field"
    assert fake_gemini.requests == []


def test_contents_cannot_replace_the_prompt(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    body = {"model": MODEL, "prompt": "p", "n": 3, "contents": [{"role": "user", "parts": [{"text": "other"}]}]}
    assert_error(post_raw(gateway, json.dumps(body)), 400, param="contents", code="reserved_upstream_field")
    assert fake_gemini.requests == []


def test_new_keys_inside_gateway_dicts_pass(client: openai.OpenAI, fake_gemini: FakeGemini) -> None:
    client.images.generate(model=MODEL, prompt="p", extra_body={"generation_config": {"temperature": 0.2}})
    sent = fake_gemini.requests[0].json
    assert sent["generationConfig"]["temperature"] == 0.2
    assert sent["generationConfig"]["imageConfig"]["imageSize"] == "1K"


# --- client input: JSON -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        ('{"model": "M", "prompt": "p", "temperature": NaN}', "temperature", "invalid_number"),
        ('{"model": "M", "prompt": "p", "temperature": Infinity}', "temperature", "invalid_number"),
        ('{"model": "M", "prompt": "p", "temperature": -Infinity}', "temperature", "invalid_number"),
        ('{"model": "M", "prompt": "p", "top": {"a": [1, {"b": NaN}]}}', "top", "invalid_number"),
        ('{"model": "M", "prompt": "p", "temperature": 1e999}', "temperature", "invalid_number"),
        ('{"model": "M", "prompt": "\\ud800"}', "prompt", "invalid_text"),
        ('{"model": "M", "prompt": "p", "note": "x\\udfffy"}', "note", "invalid_text"),
        ('{"model": "M", "prompt": "p", "cfg": {"\\ud800": 1}}', "cfg", "invalid_text"),
        ('{"model": "M", "prompt": "p", "\\ud800": 1}', "\\ud800", "invalid_text"),
        ('{"model": "\\ud800", "prompt": "p"}', "model", "invalid_text"),
        ('{"model": "M", "prompt": "p", "deep": ' + "[" * 500 + "]" * 500 + "}", "deep", "nested_too_deeply"),
        ('{"model": "M", "prompt": "p", "deep": ' + '{"a":' * 40 + "1" + "}" * 40 + "}", "deep", "nested_too_deeply"),
    ],
)
def test_bad_json_values_are_400_before_any_call(
    gateway: RunningGateway, fake_gemini: FakeGemini, raw: str, param: str, code: str
) -> None:
    for path in ("/v1/images/generations", "/v1/images/edits"):
        response = post_raw(gateway, raw.replace('"M"', json.dumps(MODEL)), path=path)
        assert_error(response, 400, param=param, code=code)
    assert fake_gemini.requests == []


@pytest.mark.parametrize("value", ["1e200K", "1e999", "NaNK", "infK", "9" * 300 + "K", "9" * 400, "-1K"])
def test_absurd_resolutions_are_400(gateway: RunningGateway, fake_gemini: FakeGemini, value: str) -> None:
    body = {"model": MODEL, "prompt": "p", "resolution": value}
    assert_error(post_raw(gateway, json.dumps(body)), 400, param="resolution")
    assert fake_gemini.requests == []


@pytest.mark.parametrize("value", ["1e200x1e200", "9" * 400 + "x1", "infxinf", "nanxnan", "1x" + "9" * 320])
def test_absurd_sizes_are_400(gateway: RunningGateway, fake_gemini: FakeGemini, value: str) -> None:
    body = {"model": MODEL, "prompt": "p", "size": value}
    assert_error(post_raw(gateway, json.dumps(body)), 400, param="size")
    assert fake_gemini.requests == []


# --- client input: multipart --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "charset", "param"),
    [
        ([field(b"prompt", b"+2AA-")], "utf-7", None),  # utf-7 decodes to a lone surrogate
        ([field(b"prompt", b"\\ud800")], "unicode_escape", None),
        ([field(b"prompt", b"p")], "latin-1", None),
        ([field(b"note", "é".encode("utf-16"), b"text/plain; charset=utf-16")], None, "note"),
        ([field(b"note", "é".encode("latin-1"), b"text/plain; charset=latin-1")], None, "note"),
        ([field(b"_charset_", b"latin-1")], None, "_charset_"),
        ([field(b"note", b"caf\xe9")], None, "note"),  # invalid UTF-8 bytes in a field
        ([field(b"not\xffe", b"x")], None, "name"),  # ... and in a field name
        ([field(b"prompt", b"\xed\xa0\x80")], None, "prompt"),  # a surrogate encoded as UTF-8 bytes
    ],
)
def test_multipart_charset_tricks_are_400(
    gateway: RunningGateway,
    fake_gemini: FakeGemini,
    parts: list[tuple[bytes, bytes]],
    charset: str | None,
    param: str | None,
) -> None:
    body, content_type = multipart([*base_fields(), *parts], charset=charset)
    response = post_raw(gateway, body, content_type, path="/v1/images/edits")
    error = assert_error(response, 400)
    assert error["code"] in ("invalid_text", "unsupported_charset")
    if param is not None:
        assert error["param"] == param
    assert fake_gemini.requests == []


def test_utf8_multipart_text_still_works(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    body, content_type = multipart(
        [
            field(b"model", MODEL.encode()),
            field(b"prompt", "café ☕".encode()),
            field(b"_charset_", b"UTF-8"),
            field(b"generation_config[temperature]", b"0.5", b"text/plain; charset=UTF-8"),
        ],
        charset="utf-8",
    )
    response = post_raw(gateway, body, content_type, path="/v1/images/edits")
    assert response.status_code == 200, response.text
    sent = fake_gemini.requests[0].json
    assert sent["contents"][0]["parts"][0]["text"] == "café ☕"
    assert sent["generationConfig"]["temperature"] == "0.5" and "_charset_" not in sent


def test_thousand_deep_field_name_is_400(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    name = b"a" + b"[b]" * 1000
    body, content_type = multipart([*base_fields(), field(name, b"1")])
    assert_error(
        post_raw(gateway, body, content_type, path="/v1/images/edits"), 400, param="a", code="nested_too_deeply"
    )
    assert fake_gemini.requests == []


# --- hostile upstreams --------------------------------------------------------------------------


def generate(gateway: RunningGateway, **extra: Any) -> httpx.Response:
    return post_raw(gateway, json.dumps({"model": MODEL, "prompt": "p", **extra}))


@pytest.mark.parametrize("status", [200, 400, 429, 500])
def test_deeply_nested_gemini_json_is_502(gateway: RunningGateway, fake_gemini: FakeGemini, status: int) -> None:
    fake_gemini.enqueue(deeply_nested_json(status))
    response = generate(gateway)
    assert response.status_code in (400, 502, 503) and response.status_code != 500, response.text
    if status == 200:
        assert_error(response, 502, code="upstream_bad_response")


@pytest.mark.parametrize("delay", ["1e999s", "nans", "infs", "-5s", "1e300s", "99999999999999999999s", "s"])
def test_non_finite_retry_delay_is_a_plain_503(gateway: RunningGateway, fake_gemini: FakeGemini, delay: str) -> None:
    fake_gemini.enqueue(google_retry_delay(delay))
    response = generate(gateway)
    assert_error(response, 503, code="upstream_rate_limited")
    retry_after = response.headers.get("retry-after")
    assert retry_after is None or 1 <= int(retry_after) <= 86_400


def test_non_finite_retry_delay_never_reaches_a_sleep(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    """With retries on, a `nans` hint used to become a NaN backoff; each kind is retried normally."""
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        retry_attempts=3,
        retry_backoff_seconds=0.01,
    )
    fake_gemini.enqueue(google_retry_delay("nans"), google_retry_delay("1e999s"))
    response = generate(gw)
    assert response.status_code == 200, response.text
    assert len(fake_gemini.requests) == 3


@pytest.mark.parametrize(
    "hostile",
    [
        gemini_image(usage={"promptTokenCount": 10**400, "candidatesTokenCount": "9" * 5000}),
        gemini_image(usage={"promptTokenCount": 1e308 * 10, "candidatesTokenCount": [1]}),
        gemini_image(usage={"promptTokenCount": 2**70, "candidatesTokenCount": -3}),
    ],
)
def test_absurd_token_counts_are_not_a_500(gateway: RunningGateway, fake_gemini: FakeGemini, hostile: Any) -> None:
    fake_gemini.enqueue(hostile)
    response = generate(gateway)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["input_tokens"] == 0 and usage["output_tokens"] == 0


@pytest.mark.parametrize(
    "hostile",
    [
        json_answer(200, {"candidates": [{"finishReason": ["SAFETY"], "content": {"parts": []}}]}),
        json_answer(200, {"candidates": [], "promptFeedback": {"blockReason": {"a": 1}}}),
        json_answer(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "x", "details": 5}}),
        json_answer(500, {"error": {"status": ["x"], "message": {"nested": [1, 2]}}}),
        json_answer(200, {"candidates": [{"content": {"parts": [{"inlineData": 7}]}}]}),
    ],
)
def test_odd_gemini_types_are_upstream_errors(gateway: RunningGateway, fake_gemini: FakeGemini, hostile: Any) -> None:
    fake_gemini.enqueue(hostile)
    response = generate(gateway)
    assert response.status_code in (502, 503), response.text
    assert_error(response, response.status_code, error_type="upstream_error")


@pytest.mark.parametrize(
    "hostile",
    [
        deeply_nested_json(201),
        deeply_nested_json(422),
        json_answer(201, {"id": "x", "status": "failed", "error": [[[{"deep": "x"}]]]}),
        json_answer(201, {"id": "x", "status": "succeeded", "output": {"not": "a uri"}}),
        json_answer(201, {"id": ["x"], "status": ["succeeded"]}),
        json_answer(201, {"id": "x", "status": "processing", "urls": {"get": "http://127.0.0.1:1/\udfff"}}),
        json_answer(201, {"id": "x", "status": "succeeded", "output": "http://[::1"}),
    ],
)
def test_hostile_replicate_answers_are_not_500(
    gateway_factory: Any, fake_replicate: FakeReplicate, hostile: Any
) -> None:
    gw = gateway_factory(replicate_api_key=fake_replicate.api_key, replicate_base_url=fake_replicate.base_url)
    fake_replicate.enqueue(hostile)
    response = generate(gw)
    assert response.status_code in (400, 502), response.text
    assert_error(response, response.status_code)


@pytest.mark.parametrize(
    "hostile",
    [
        deeply_nested_json(200),
        OnResult(deeply_nested_json(200)),
        OnResult(json_answer(200, {"images": "not a list"})),
        json_answer(422, {"detail": [{"loc": [{"x": 1}], "msg": {"m": [1]}, "type": ["t"]}]}),
    ],
)
def test_hostile_fal_answers_are_not_500(gateway_factory: Any, fake_fal: FakeFal, hostile: Any) -> None:
    gw = gateway_factory(fal_api_key=fake_fal.api_key, fal_base_url=fake_fal.base_url)
    fake_fal.enqueue(hostile)
    response = generate(gw)
    assert response.status_code in (400, 502), response.text
    assert_error(response, response.status_code)


@pytest.mark.parametrize(
    "hostile",
    [
        deeply_nested_json(200),
        deeply_nested_json(400),
        json_answer(400, {"error": {"code": ["content_policy_violation"], "message": "no"}}),
        json_answer(400, {"error": {"code": "content_policy_violation", "message": {"a": 1}, "param": ["prompt"]}}),
        json_answer(200, {"data": [{"b64_json": 5}]}),
        json_answer(200, {"data": {"0": {}}}),
    ],
)
def test_hostile_openai_answers_are_not_500(gateway_factory: Any, fake_openai: FakeOpenAI, hostile: Any) -> None:
    gw = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    fake_openai.enqueue(hostile)
    response = generate(gw)
    assert response.status_code in (400, 502), response.text
    error = assert_error(response, response.status_code)
    assert error["param"] is None or isinstance(error["param"], str)


def test_body_cut_off_inside_a_file_leaks_no_spool_file(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    """python-multipart never ends a part cut off by the end of the body, so its spool file
    was in no form to close: one leaked descriptor per such request."""
    body, content_type = multipart(base_fields())
    cut = body[: body.index(PNG) + 10]  # inside the image part
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            assert_error(post_raw(gateway, cut, content_type, path="/v1/images/edits"), 400)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_collision_is_final_not_failed_over(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate
) -> None:
    """Bodies are built inside each provider's call, after routing: the collision must still be
    the client's error, neither retried nor handed to Replicate (whose input has no `contents`)."""
    gw = gateway_factory(
        gemini_api_key=fake_gemini.api_key,
        gemini_base_url=fake_gemini.base_url,
        replicate_api_key=fake_replicate.api_key,
        replicate_base_url=fake_replicate.base_url,
        retry_attempts=3,
        retry_backoff_seconds=0.01,
    )
    response = generate(gw, n=2, contents=[{"parts": [{"text": "other"}]}])
    assert_error(response, 400, param="contents", code="reserved_upstream_field")
    assert fake_gemini.requests == [] and fake_replicate.creates == []
