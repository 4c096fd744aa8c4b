"""stream: true end to end: the official openai SDK -> gateway -> fakes over loopback, answered as
OpenAI's image event stream (server/streaming.py)."""

from __future__ import annotations

import base64
import io
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import Delay, FakeGemini, GeminiError, Hang, Streamed, thought_color
from ..fakes.images import detect_mime, image_size, pixel_at, solid_png

MODEL = "gemini-3-pro-image-preview"
FLASH = "gemini-2.5-flash-image"


def events_of(stream: Any) -> list[Any]:
    return list(stream)


def near(color: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(color, expected, strict=True))


def extra(event: Any, name: str) -> Any:
    """A field imagegate adds to OpenAI's event (the SDK keeps unknown fields)."""
    return (event.model_extra or {})[name]


def sse_lines(gateway: RunningGateway, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    """The raw event stream, line by line, as a plain HTTP client reads it."""
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/images/generations",
        json=body,
        headers={"authorization": f"Bearer {API_KEY}", **(headers or {})},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(response.iter_lines())


def test_a_stream_ends_with_one_completed_event_per_image(client: OpenAI, fake_gemini: FakeGemini) -> None:
    events = events_of(client.images.generate(model=MODEL, prompt="a lighthouse", n=2, stream=True))
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for event in events:
        data = base64.b64decode(event.b64_json)
        assert detect_mime(data) == "image/png"
        assert event.size == "%dx%d" % image_size(data) and event.output_format == "png"
        assert event.usage.input_tokens > 0 and event.usage.output_tokens > 0
        assert extra(event, "effective")["model"] == MODEL and extra(event, "effective")["n"] == 2
        assert extra(event, "adjustments") == []
    assert len(fake_gemini.requests) == 2


def test_completed_events_follow_the_requested_output_format_and_carry_the_url(
    client: OpenAI, gateway: RunningGateway
) -> None:
    [event] = events_of(
        client.images.generate(model=MODEL, prompt="p", stream=True, output_format="jpeg", response_format="url")
    )
    data = base64.b64decode(event.b64_json)
    assert detect_mime(data) == "image/jpeg" and event.output_format == "jpeg"
    hosted = httpx.get(extra(event, "url"), timeout=10)
    assert hosted.status_code == 200 and hosted.content == data


def test_an_edit_streams_image_edit_events(client: OpenAI, fake_gemini: FakeGemini) -> None:
    events = events_of(
        client.images.edit(
            model=MODEL,
            image=("in.png", io.BytesIO(solid_png(64, 64, (0, 128, 0))), "image/png"),
            prompt="p",
            stream=True,
        )
    )
    assert [e.type for e in events] == ["image_edit.completed"]
    assert base64.b64decode(events[0].b64_json)
    parts = fake_gemini.requests[-1].json["contents"][0]["parts"]
    assert any("inline_data" in p or "inlineData" in p for p in parts)  # the input image went upstream


def test_bad_input_is_still_a_json_error_before_anything_streams(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=MODEL, prompt="p", output_format="bmp", stream=True)  # type: ignore[arg-type]
    assert info.value.status_code == 400 and info.value.body["param"] == "output_format"  # type: ignore[index]


def test_an_upstream_failure_after_the_stream_began_is_an_error_event(
    gateway: RunningGateway, fake_gemini: FakeGemini, client: OpenAI
) -> None:
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "upstream broke"))
    lines = sse_lines(gateway, {"model": MODEL, "prompt": "p", "stream": True})
    assert lines[:1] == ["event: error"] and lines[1].startswith("data: ")
    body = httpx.Response(200, content=lines[1].removeprefix("data: ")).json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "upstream broke"))
    with pytest.raises(openai.APIError):
        events_of(client.images.generate(model=MODEL, prompt="p", stream=True))


def test_keep_alive_comments_while_the_upstream_is_slow(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, stream_keepalive_seconds=0.2
    )
    fake_gemini.enqueue(Delay(1.2))
    lines = sse_lines(gateway, {"model": MODEL, "prompt": "p", "stream": True})
    completed = lines.index("event: image_generation.completed")
    assert lines[:completed].count(": keep-alive") >= 3  # ~1.2 s at one comment per 0.2 s of quiet
    assert all(line in (": keep-alive", "") for line in lines[:completed])


def test_partial_images_from_a_provider_without_them_are_not_applied(client: OpenAI) -> None:
    [event] = events_of(client.images.generate(model=FLASH, prompt="p", stream=True, partial_images=2))
    assert event.type == "image_generation.completed"
    assert {
        "param": "partial_images",
        "requested": "2",
        "applied": "not applied (provider gemini lacks it)",
    } in extra(event, "adjustments")


def test_partial_images_without_stream_are_not_applied(client: OpenAI) -> None:
    result = client.images.generate(model=MODEL, prompt="p", extra_body={"partial_images": 2})
    adjustments = (result.model_extra or {})["adjustments"]
    assert {
        "param": "partial_images",
        "requested": "2",
        "applied": "not applied (only with stream: true)",
    } in adjustments


def test_stream_and_an_idempotency_key_are_refused_together(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=MODEL, prompt="p", stream=True, extra_headers={"Idempotency-Key": "k-1"})
    assert info.value.body["param"] == "stream"  # type: ignore[index]
    assert fake_gemini.requests == []


def test_a_stream_form_field_streams_an_edit(gateway: RunningGateway) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/images/edits",
        data={"model": MODEL, "prompt": "p", "stream": "true"},
        files={"image": ("in.png", solid_png(32, 32, (9, 9, 9)), "image/png")},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    assert "event: image_edit.completed" in lines


def test_a_client_that_leaves_the_stream_cancels_the_upstream_call(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, stream_keepalive_seconds=0.1
    )
    fake_gemini.enqueue(Hang(30))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "p", "stream": True},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        assert next(lines) == ": keep-alive"  # streaming, with the upstream call in flight
    fake_gemini.wait_for_requests(1)
    deadline = time.monotonic() + 10
    while fake_gemini.cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_gemini.cancelled == 1


def test_partial_images_arrive_before_the_final_image_is_even_sent(client: OpenAI, fake_gemini: FakeGemini) -> None:
    """Nano Banana Pro's thought images, streamed by Gemini's streamGenerateContent, reach the SDK as
    partial_image events while the fake still holds back the answer: they are not sent at the end."""
    gate = threading.Event()
    fake_gemini.enqueue(Streamed(thought_images=3, gate=gate))
    stream = client.images.generate(model=MODEL, prompt="a fox", stream=True, partial_images=2, output_format="webp")
    events = iter(stream)
    partials = [next(events), next(events)]  # both arrive while the answer is held upstream
    assert not gate.is_set()
    assert [(e.type, e.partial_image_index) for e in partials] == [
        ("image_generation.partial_image", i) for i in (0, 1)
    ]
    for index, event in enumerate(partials):
        data = base64.b64decode(event.b64_json)
        assert detect_mime(data) == "image/webp" and event.output_format == "webp"  # converted as the final is
        assert near(pixel_at(data, 0, 0)[:3], thought_color(index))  # webp is lossy
    gate.set()
    rest = list(events)
    assert [e.type for e in rest] == ["image_generation.completed"]  # the third thought image: over partial_images
    final = base64.b64decode(rest[0].b64_json)
    assert detect_mime(final) == "image/webp" and not near(pixel_at(final, 0, 0)[:3], thought_color(0))
    sent = fake_gemini.requests[-1]
    assert ":streamGenerateContent" in sent.path and sent.json["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True
    }
    assert extra(rest[0], "adjustments") == []


def test_an_edit_streams_partial_images_too(client: OpenAI, fake_gemini: FakeGemini) -> None:
    events = events_of(
        client.images.edit(
            model=MODEL,
            image=("in.png", io.BytesIO(solid_png(64, 64, (0, 128, 0))), "image/png"),
            prompt="p",
            stream=True,
            partial_images=1,
        )
    )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_an_upstream_without_the_streamed_method_still_streams_the_image(
    client: OpenAI, fake_gemini: FakeGemini
) -> None:
    """A Gemini-compatible upstream with only generateContent (the playground always streams): the
    stream carries the image, made by the plain call, with no partial images and no error."""
    fake_gemini.stream_method = "missing"
    events = events_of(client.images.generate(model=MODEL, prompt="a fox", stream=True, partial_images=2))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert detect_mime(base64.b64decode(events[0].b64_json)) == "image/png"
    assert [r.path.rpartition(":")[2] for r in fake_gemini.requests] == ["streamGenerateContent", "generateContent"]
