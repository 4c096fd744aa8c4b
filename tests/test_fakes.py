"""The fake upstreams themselves, over real HTTP: if these break, every gateway test lies."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.gemini import (
    PRO_SIZES,
    Delay,
    FakeGemini,
    FinishBlocked,
    GeminiError,
    Hang,
    MalformedJSON,
    PromptBlocked,
    Streamed,
    thought_color,
)
from tests.fakes.images import color_for, detect_mime, image_size, pixel_at, solid_jpeg, solid_png
from tests.fakes.openai_upstream import FakeOpenAI, OpenAIError, partial_color
from tests.fakes.openai_upstream import Streamed as OpenAIStreamed
from tests.fakes.replicate import FakeReplicate

GEMINI_PATH = "/v1beta/models/gemini-3-pro-image-preview:generateContent"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def _gemini_post(fake: FakeGemini, body: dict, key: str = "test-gemini-key") -> httpx.Response:
    return httpx.post(fake.base_url + GEMINI_PATH, json=body, headers={"x-goog-api-key": key}, timeout=10)


def _text_body(prompt: str, **image_config: str) -> dict:
    body: dict = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    if image_config:
        body["generationConfig"] = {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config}
    return body


def _oa_headers(key: str = "test-openai-key") -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- Gemini ---------------------------------------------------------------------------------


def test_gemini_success_shape_and_thought_part(gemini: FakeGemini) -> None:
    resp = _gemini_post(gemini, _text_body("a cat", aspectRatio="16:9", imageSize="2K"))
    assert resp.status_code == 200
    body = resp.json()
    candidate = body["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert body["usageMetadata"]["totalTokenCount"] == 1307
    assert body["modelVersion"] == "gemini-3-pro-image-preview"
    thought, text, final = candidate["content"]["parts"]
    assert thought["thought"] is True and image_size(base64.b64decode(thought["inlineData"]["data"])) == (8, 8)
    assert text == {"text": "Here is your image: a cat"}
    image = base64.b64decode(final["inlineData"]["data"])
    assert final["inlineData"]["mimeType"] == "image/png" and "thought" not in final
    assert image_size(image) == PRO_SIZES[("16:9", "2K")] == (2731, 1536)
    assert pixel_at(image) == color_for("a cat")
    recorded = gemini.requests[0]
    assert recorded.model == "gemini-3-pro-image-preview"
    assert recorded.headers["x-goog-api-key"] == "test-gemini-key"
    assert recorded.json["contents"][0]["parts"][0]["text"] == "a cat"


def test_gemini_snake_case_inline_image_and_query_key(gemini: FakeGemini) -> None:
    png = base64.b64encode(solid_png(300, 200, (1, 2, 3))).decode()
    body = {
        "contents": [{"parts": [{"text": "edit"}, {"inline_data": {"mime_type": "image/png", "data": png}}]}],
        "generation_config": {"seed": 7},
    }
    resp = httpx.post(gemini.base_url + GEMINI_PATH + "?key=test-gemini-key", json=body, timeout=10)
    assert resp.status_code == 200
    final = resp.json()["candidates"][0]["content"]["parts"][-1]
    image = base64.b64decode(final["inlineData"]["data"])
    assert image_size(image) == PRO_SIZES[("3:2", "1K")]  # nearest ratio to the 300x200 input
    assert pixel_at(image) == color_for("edit7")


def test_gemini_bad_key_is_403(gemini: FakeGemini) -> None:
    resp = _gemini_post(gemini, _text_body("x"), key="wrong")
    assert resp.status_code == 403
    assert resp.json()["error"] == {
        "code": 403,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "PERMISSION_DENIED",
    }
    assert len(gemini.requests) == 1  # rejected requests are recorded too


@pytest.mark.parametrize(
    "body",
    [
        _text_body("x", imageSize="1k"),
        _text_body("x", aspectRatio="7:3"),
        {**_text_body("x"), "n": 2},
        {
            "contents": [
                {
                    "parts": [
                        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(solid_jpeg(8, 8)).decode()}}
                    ]
                }
            ]
        },
    ],
    ids=["lowercase-size", "bad-ratio", "unknown-field", "mime-mismatch"],
)
def test_gemini_invalid_requests_are_400(gemini: FakeGemini, body: dict) -> None:
    resp = _gemini_post(gemini, body)
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_gemini_unknown_field_message(gemini: FakeGemini) -> None:
    resp = _gemini_post(gemini, {**_text_body("x"), "n": 2})
    assert resp.json()["error"]["message"] == 'Invalid JSON payload received. Unknown name "n": Cannot find field.'


def test_gemini_scripted_behaviours(gemini: FakeGemini) -> None:
    gemini.enqueue(
        GeminiError(429, "RESOURCE_EXHAUSTED", "quota", retry_after_s=23),
        PromptBlocked("PROHIBITED_CONTENT", "nope"),
        FinishBlocked(),
        MalformedJSON(),
    )
    err = _gemini_post(gemini, _text_body("x"))
    assert err.status_code == 429
    assert err.json()["error"]["details"][0]["retryDelay"] == "23s"
    blocked = _gemini_post(gemini, _text_body("x")).json()
    assert "candidates" not in blocked
    assert blocked["promptFeedback"] == {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "nope"}
    finish = _gemini_post(gemini, _text_body("x")).json()["candidates"][0]
    assert finish["finishReason"] == "IMAGE_SAFETY"
    assert all("inlineData" not in part for part in finish["content"]["parts"])
    malformed = _gemini_post(gemini, _text_body("x"))
    assert malformed.status_code == 200 and malformed.text == '{"candidates": ['
    assert _gemini_post(gemini, _text_body("x")).status_code == 200  # queue drained


def test_gemini_concurrency_and_extra_images() -> None:
    with FakeGemini(output_mime="image/jpeg", images_per_response=2) as fake:
        fake.default_behaviour = Delay(0.3)
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda: results.append(_gemini_post(fake, _text_body("p")))) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert fake.max_concurrency == 3 and fake.active == 0
        parts = results[0].json()["candidates"][0]["content"]["parts"]
        finals = [p for p in parts if "inlineData" in p and not p.get("thought")]
        assert len(finals) == 2
        assert detect_mime(base64.b64decode(finals[0]["inlineData"]["data"])) == "image/jpeg"


STREAM_PATH = "/v1beta/models/gemini-3-pro-image-preview:streamGenerateContent"


def _thinking_body(prompt: str, include_thoughts: bool = True) -> dict:
    body = _text_body(prompt, aspectRatio="1:1")
    body["generationConfig"]["thinkingConfig"] = {"includeThoughts": include_thoughts}
    return body


def _stream_post(fake: FakeGemini, body: dict, query: str = "?alt=sse") -> httpx.Response:
    return httpx.post(
        fake.base_url + STREAM_PATH + query, json=body, headers={"x-goog-api-key": "test-gemini-key"}, timeout=10
    )


def _events(resp: httpx.Response) -> list[dict]:
    """The data of each event, as google-genai reads them: `data: ` lines, a blank line between."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    raw = resp.content
    assert raw.endswith(b"\r\n\r\n")
    return [json.loads(event.removeprefix(b"data: ")) for event in raw.split(b"\r\n\r\n")[:-1]]


def test_gemini_stream_sends_thought_images_then_the_answer(gemini: FakeGemini) -> None:
    events = _events(_stream_post(gemini, _thinking_body("a cat")))
    parts = [part for event in events for part in event["candidates"][0]["content"]["parts"]]
    thoughts = [p for p in parts if p.get("thought") and "inlineData" in p]
    finals = [p for p in parts if "inlineData" in p and not p.get("thought")]
    assert [pixel_at(base64.b64decode(p["inlineData"]["data"])) for p in thoughts] == [
        thought_color(0),
        thought_color(1),
    ]
    assert len(finals) == 1 and pixel_at(base64.b64decode(finals[0]["inlineData"]["data"])) == color_for("a cat")
    assert parts.index(finals[0]) > parts.index(thoughts[-1])
    assert [e["candidates"][0].get("finishReason") for e in events][-1] == "STOP"
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 1290
    assert gemini.requests[0].query == {"alt": "sse"}


def test_gemini_stream_without_include_thoughts_has_no_thought_images(gemini: FakeGemini) -> None:
    events = _events(_stream_post(gemini, _thinking_body("a cat", include_thoughts=False)))
    parts = [part for event in events for part in event["candidates"][0]["content"]["parts"]]
    assert not any(p.get("thought") for p in parts) and any("inlineData" in p for p in parts)


def test_gemini_stream_without_alt_sse_is_a_json_array(gemini: FakeGemini) -> None:
    resp = _stream_post(gemini, _thinking_body("a cat"), query="")
    assert resp.headers["content-type"].startswith("application/json")
    chunks = resp.json()
    assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_stream_scripts_errors_and_blocks(gemini: FakeGemini) -> None:
    gemini.enqueue(GeminiError(429, "RESOURCE_EXHAUSTED", "quota"), PromptBlocked("SAFETY"), Streamed(chunks=()))
    error = _stream_post(gemini, _thinking_body("x"))
    assert error.status_code == 429 and error.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    [blocked] = _events(_stream_post(gemini, _thinking_body("x")))
    assert blocked["promptFeedback"]["blockReason"] == "SAFETY" and "candidates" not in blocked
    assert _stream_post(gemini, _thinking_body("x")).content == b""


def test_gemini_stream_drops_the_connection_when_told(gemini: FakeGemini) -> None:
    gemini.enqueue(Streamed(drop_after=1))
    with pytest.raises(httpx.RemoteProtocolError):
        _stream_post(gemini, _thinking_body("x"))


def test_gemini_thinking_config_is_validated(gemini: FakeGemini) -> None:
    body = _text_body("x")
    body["generationConfig"] = {"thinkingConfig": {"includeThoughts": True, "showThoughts": True}}
    resp = _stream_post(gemini, body)
    assert resp.status_code == 400 and "showThoughts" in resp.json()["error"]["message"]
    body["generationConfig"] = {"thinkingConfig": {"includeThoughts": "yes"}}
    assert _gemini_post(gemini, body).status_code == 400


# --- OpenAI ---------------------------------------------------------------------------------


def test_openai_generation_b64(openai_fake: FakeOpenAI) -> None:
    resp = httpx.post(
        openai_fake.base_url + "/images/generations",
        headers=_oa_headers(),
        json={"model": "gpt-image-1", "prompt": "dog", "n": 2, "size": "512x256", "output_format": "webp"},
        timeout=10,
    )
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["data"]) == 2 and body["usage"]["output_tokens"] > 0
    first = base64.b64decode(body["data"][0]["b64_json"])
    assert detect_mime(first) == "image/webp" and image_size(first) == (512, 256)
    assert openai_fake.requests[0].model == "gpt-image-1"


def test_openai_bad_key_and_scripted_error(openai_fake: FakeOpenAI) -> None:
    resp = httpx.post(
        openai_fake.base_url + "/images/generations", headers=_oa_headers("nope"), json={"prompt": "x"}, timeout=10
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    openai_fake.enqueue(OpenAIError(429, "slow down", type="requests", code="rate_limit_exceeded", retry_after_s=2))
    resp = httpx.post(
        openai_fake.base_url + "/images/generations", headers=_oa_headers(), json={"prompt": "x"}, timeout=10
    )
    assert resp.status_code == 429 and resp.headers["retry-after"] == "2"
    assert resp.json()["error"] == {
        "message": "slow down",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_openai_multipart_edit_recorded(openai_fake: FakeOpenAI) -> None:
    files = [
        ("image[]", ("a.png", solid_png(64, 64, (1, 1, 1)), "image/png")),
        ("image[]", ("b.jpg", solid_jpeg(32, 32), "image/jpeg")),
        ("mask", ("mask.png", solid_png(64, 64, (0, 0, 0, 0)), "image/png")),
    ]
    resp = httpx.post(
        openai_fake.base_url + "/images/edits",
        headers=_oa_headers(),
        data={"prompt": "add hat", "model": "gpt-image-1", "image_config[aspect_ratio]": "16:9"},
        files=files,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    recorded = openai_fake.requests[0]
    assert recorded.form == {"prompt": "add hat", "model": "gpt-image-1", "image_config[aspect_ratio]": "16:9"}
    assert [(f.field_name, f.filename, f.content_type) for f in recorded.files] == [
        ("image[]", "a.png", "image/png"),
        ("image[]", "b.jpg", "image/jpeg"),
        ("mask", "mask.png", "image/png"),
    ]
    assert image_size(recorded.files[0].data) == (64, 64)


def test_openai_mask_size_mismatch_is_400(openai_fake: FakeOpenAI) -> None:
    files = [("image", ("a.png", solid_png(64, 64), "image/png")), ("mask", ("m.png", solid_png(32, 32), "image/png"))]
    resp = httpx.post(
        openai_fake.base_url + "/images/edits", headers=_oa_headers(), data={"prompt": "x"}, files=files, timeout=10
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "mask"


def test_openai_json_edit_and_url_response(openai_fake: FakeOpenAI) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(solid_png(16, 16)).decode()
    resp = httpx.post(
        openai_fake.base_url + "/images/edits",
        headers=_oa_headers(),
        json={"prompt": "blue", "images": [{"image_url": data_url}], "response_format": "url"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    url = resp.json()["data"][0]["url"]
    assert url.startswith(openai_fake.url + "/files/") and url.endswith(".png")
    image = httpx.get(url, timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert pixel_at(image.content) == color_for("blue")
    assert len(openai_fake.downloads) == 1


def test_hang_ends_when_client_gives_up(gemini: FakeGemini) -> None:
    gemini.enqueue(Hang(30))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gemini.base_url + GEMINI_PATH,
            json=_text_body("x"),
            headers={"x-goog-api-key": "test-gemini-key"},
            timeout=0.2,
        )
    # The handler counts the cancel, then leaves its in-flight count: wait for both (under load
    # the test thread can look in between).
    deadline = time.monotonic() + 5
    while (gemini.cancelled == 0 or gemini.active) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gemini.cancelled == 1 and gemini.active == 0
    gemini.reset()
    assert gemini.requests == [] and gemini.cancelled == 0


# --- FakeReplicate: bytedance/seedream-5-lite's input schema ----------------------------------

SEEDREAM_5_PATH = "/v1/models/bytedance/seedream-5-lite/predictions"


def _replicate_create(fake: FakeReplicate, data: dict[str, object]) -> httpx.Response:
    return httpx.post(
        fake.base_url + SEEDREAM_5_PATH,
        json={"input": data},
        timeout=10,
        headers={"authorization": f"Bearer {fake.api_key}", "prefer": "wait"},
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"prompt": "p", "size": "custom", "width": 2048, "height": 2048}, "width"),  # seedream-4's, not 5 lite's
        ({"prompt": "p", "size": "4K"}, "input.size"),
        ({"prompt": "p", "size": "1K"}, "input.size"),
        ({"prompt": "p", "aspect_ratio": "4:5"}, "input.aspect_ratio"),
        ({"prompt": "p", "output_format": "jpg"}, "input.output_format"),
        ({"prompt": "p", "enhance_prompt": True}, "enhance_prompt"),
        ({"prompt": "p", "seed": 1}, "seed"),
        ({"prompt": "p", "image_input": ["https://example.invalid/x.png"] * 15}, "input.image_input"),
    ],
)
def test_fake_replicate_refuses_what_seedream_5_lite_does_not_take(data: dict[str, object], field: str) -> None:
    with FakeReplicate(instant=True) as fake:
        response = _replicate_create(fake, data)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


def test_fake_replicate_seedream_5_lite_makes_an_array_of_png_at_the_tier() -> None:
    with FakeReplicate(instant=True) as fake:
        response = _replicate_create(
            fake, {"prompt": "p", "size": "3K", "aspect_ratio": "16:9", "output_format": "png"}
        )
        assert response.status_code == 201, response.text
        prediction = response.json()
        assert prediction["status"] == "succeeded" and isinstance(prediction["output"], list)
        image = httpx.get(prediction["output"][0], timeout=10).content
    assert detect_mime(image) == "image/png" and image_size(image) == (4096, 2304)


# --- the fake OpenAI's event stream (stream=true), read by the official SDK --------------------


def test_openai_stream_is_what_the_sdk_reads(openai_fake: FakeOpenAI) -> None:
    client = openai.OpenAI(api_key=openai_fake.api_key, base_url=openai_fake.base_url, max_retries=0)
    with client:
        plain = client.images.generate(model="gpt-image-1", prompt="a cat", n=2)
        events = list(client.images.generate(model="gpt-image-1", prompt="a cat", n=2, stream=True, partial_images=2))
        assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] * 2
        assert [pixel_at(base64.b64decode(e.b64_json))[:3] for e in events[:2]] == [partial_color(0), partial_color(1)]
        finals = [base64.b64decode(e.b64_json) for e in events[2:]]
        assert finals == [base64.b64decode(d.b64_json or "") for d in plain.data or []]
        assert plain.usage is not None  # the completed events' usages add up to the JSON answer's
        assert sum(e.usage.input_tokens for e in events[2:]) == plain.usage.input_tokens
        assert sum(e.usage.output_tokens for e in events[2:]) == plain.usage.output_tokens
        openai_fake.enqueue(OpenAIStreamed(error=OpenAIError(500, "boom", type="server_error"), error_after=1))
        with pytest.raises(openai.APIError, match="boom"):
            list(client.images.generate(model="gpt-image-1", prompt="a cat", stream=True, partial_images=2))
        with pytest.raises(openai.BadRequestError):
            client.images.generate(model="gpt-image-1", prompt="a cat", stream=True, partial_images=4)


def test_openai_stream_names_each_event_and_ends_with_done_when_told(openai_fake: FakeOpenAI) -> None:
    openai_fake.enqueue(OpenAIStreamed(done=True))
    body = {"model": "gpt-image-1", "prompt": "p", "stream": True, "partial_images": 1}
    resp = httpx.post(openai_fake.base_url + "/images/generations", json=body, headers=_oa_headers(), timeout=10)
    assert resp.headers["content-type"].startswith("text/event-stream")
    lines = resp.text.split("\n")
    assert [line for line in lines if line.startswith("event: ")] == [
        "event: image_generation.partial_image",
        "event: image_generation.completed",
    ]
    assert lines[-3:] == ["data: [DONE]", "", ""]
