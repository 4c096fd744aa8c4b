"""Gemini's streamed call: thought images reported as partial images while the answer is made.

With `request.on_partial` set, the adapter calls `:streamGenerateContent?alt=sse` with
`includeThoughts` against the fake (real loopback HTTP, Google's event stream), reports each
thought image as it arrives and returns the answer by the same rules as generateContent: the
tests compare the two calls' errors and results on the same scripted behaviours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    NoImageGenerated,
    UpstreamConnectionError,
    UpstreamResponseTooLarge,
)
from imagegate.providers import GeminiProvider, ProviderRequest
from imagegate.providers.base import TokenSplit
from tests.fakes.gemini import (
    IMAGE_OUTPUT_TOKENS,
    PROMPT_TOKENS,
    FakeGemini,
    FinishBlocked,
    GeminiError,
    MalformedJSON,
    PromptBlocked,
    RawResponse,
    Streamed,
    TextOnly,
    finish_chunk,
    image_chunk,
    text_chunk,
    thought_chunk,
    thought_color,
)
from tests.fakes.hostile import json_answer
from tests.fakes.images import color_for, pixel_at, solid_png

from .partials import Partials
from .test_gemini import make_request

PATH = "/v1beta/models/gemini-3-pro-image:streamGenerateContent"
FINAL = solid_png(16, 16, (10, 200, 30))


def streamed(partials: Partials, prompt: str = "a red fox in snow", **kwargs: Any) -> ProviderRequest:
    return make_request(prompt, on_partial=partials, **kwargs)


@pytest.fixture
def provider(fake_gemini: FakeGemini, http: httpx.AsyncClient) -> GeminiProvider:
    return GeminiProvider(api_key=fake_gemini.api_key, base_url=fake_gemini.base_url, client=http)


async def raised(provider: GeminiProvider, request: ProviderRequest) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request)
    return info.value


def same_error(one: ImagegateError, other: ImagegateError) -> None:
    assert type(one) is type(other)
    assert (one.message, one.code, one.param, one.retry_after, one.upstream_status) == (
        other.message,
        other.code,
        other.param,
        other.retry_after,
        other.upstream_status,
    )


# --- partials as they arrive -----------------------------------------------------------------


async def test_partials_arrive_in_order_before_the_call_returns(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Streamed(delay=0.3))  # 2 thought images, then the answer, each 0.3 s apart
    partials = Partials()
    call = asyncio.create_task(provider.run(streamed(partials)))
    await asyncio.wait_for(partials.first.wait(), 10)
    # The first thought image is here while the fake is still holding back the rest of the stream.
    assert not call.done()
    assert len(partials.images) == 1
    result = await call
    returned = time.monotonic()
    assert partials.colors() == [thought_color(0), thought_color(1)]  # arrival order, each its own image
    assert all(seen < returned for seen in partials.times)
    # The result is the answer, not a thought image.
    assert [pixel_at(image.data) for image in result.images] == [color_for("a red fox in snow")]
    assert result.text == "Here is your image: a red fox in snow"


async def test_a_thought_image_after_the_answer_is_still_only_a_partial(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Streamed(thoughts_last=True))
    partials = Partials()
    result = await provider.run(streamed(partials))
    assert partials.colors() == [thought_color(0), thought_color(1)]
    assert [pixel_at(image.data) for image in result.images] == [color_for("a red fox in snow")]


async def test_a_stream_of_only_thought_images_is_no_image(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Streamed(chunks=(thought_chunk(solid_png(8, 8, (1, 2, 3))), finish_chunk("STOP"))))
    partials = Partials()
    error = await raised(provider, streamed(partials))
    assert isinstance(error, NoImageGenerated)
    assert error.message == "gemini returned no image (finishReason STOP)."
    assert partials.colors() == [(1, 2, 3)]  # reported all the same: the stream had it


async def test_an_invalid_interim_image_is_skipped_and_logged(
    provider: GeminiProvider, fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    chunks = (thought_chunk(b"not an image at all"), thought_chunk(solid_png(8, 8, (1, 2, 3))), image_chunk(FINAL))
    fake_gemini.enqueue(Streamed(chunks=(*chunks, finish_chunk())))
    partials = Partials()
    with caplog.at_level(logging.WARNING, logger="imagegate"):
        result = await provider.run(streamed(partials))
    assert partials.colors() == [(1, 2, 3)]
    assert [pixel_at(image.data) for image in result.images] == [(10, 200, 30)]
    assert "interim (thought) image was skipped" in caplog.text


async def test_an_invalid_final_image_is_still_an_error(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Streamed(chunks=(image_chunk(b"not an image at all"), finish_chunk())))
    error = await raised(provider, streamed(Partials()))
    assert error.code == "upstream_bad_response"


async def test_a_9mb_thought_image_comes_through_as_a_view(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    big = solid_png(8, 8, (7, 8, 9)) + b"\0" * (6_800_000)  # ~9 MB of base64 on one data: line
    fake_gemini.enqueue(Streamed(chunks=(thought_chunk(big), image_chunk(FINAL), finish_chunk())))
    partials = Partials()
    result = await provider.run(streamed(partials))
    [partial] = partials.images
    assert len(partial.blob.b64_bytes()) > 9_000_000
    assert isinstance(partial.blob.b64_bytes(), memoryview)  # the event's own bytes, not a copy
    assert partial.data == big
    assert [pixel_at(image.data) for image in result.images] == [(10, 200, 30)]


async def test_text_split_across_chunks_is_one_text(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    chunks = (text_chunk("Here is "), text_chunk("your fox."), image_chunk(FINAL), finish_chunk())
    fake_gemini.enqueue(Streamed(chunks=chunks))
    result = await provider.run(streamed(Partials()))
    assert result.text == "Here is your fox."
    assert result.images[0].revised_prompt == "Here is your fox."


async def test_usage_is_the_last_chunk_s(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    # Every chunk carries usageMetadata (growing: 1, 2, 3, 4 candidate tokens); the last has the total.
    result = await provider.run(streamed(Partials()))
    assert (result.input_tokens, result.output_tokens) == (PROMPT_TOKENS, IMAGE_OUTPUT_TOKENS)
    assert result.input_details == TokenSplit(text_tokens=PROMPT_TOKENS)
    assert result.output_details == TokenSplit(image_tokens=IMAGE_OUTPUT_TOKENS)


async def test_keep_all_images_keeps_every_answer_image(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.images_per_response = 2
    result = await provider.run(streamed(Partials(), options={"limit_generations": False}))
    assert len(result.images) == 2
    assert len((await provider.run(streamed(Partials()))).images) == 1


# --- the request -----------------------------------------------------------------------------


async def test_the_streamed_request_is_generate_content_s_with_thoughts(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    options: dict[str, Any] = {"enable_web_search": True, "safety_tolerance": "2"}
    await provider.run(make_request("a lighthouse", options=options))
    await provider.run(make_request("a lighthouse", options=options, on_partial=Partials()))
    plain, stream = fake_gemini.requests
    assert plain.path == "/v1beta/models/gemini-3-pro-image:generateContent" and plain.query == {}
    assert stream.path == PATH
    assert stream.query == {"alt": "sse"}
    assert stream.headers["x-goog-api-key"] == fake_gemini.api_key
    assert stream.json["generationConfig"].pop("thinkingConfig") == {"includeThoughts": True}
    assert stream.json == plain.json  # everything else as generateContent


async def test_a_passed_through_thinking_config_keeps_its_fields(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    extra = {"generationConfig": {"thinking_config": {"thinkingLevel": "high", "include_thoughts": False}}}
    await provider.run(make_request(extra=extra, on_partial=Partials()))
    config = fake_gemini.requests[0].json["generationConfig"]
    assert config["thinking_config"] == {"thinkingLevel": "high", "includeThoughts": True}
    assert "thinkingConfig" not in config  # one field, in the spelling it came in


async def test_without_a_listener_nothing_is_streamed(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    result = await provider.run(make_request())
    [recorded] = fake_gemini.requests
    assert recorded.path.endswith(":generateContent")
    assert "thinkingConfig" not in recorded.json["generationConfig"]
    assert len(result.images) == 1


# --- failures, as generateContent's ----------------------------------------------------------

BEHAVIOURS: dict[str, Callable[[], Any]] = {
    "429": lambda: GeminiError(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted", retry_after_s=23),
    "400": lambda: GeminiError(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "403": lambda: GeminiError(403, "PERMISSION_DENIED", "API key not valid."),
    "500": lambda: GeminiError(500, "INTERNAL", "An internal error has occurred."),
    "503": lambda: GeminiError(503, "UNAVAILABLE", "The model is overloaded."),
    "prompt-blocked": lambda: PromptBlocked("PROHIBITED_CONTENT", "The prompt was blocked."),
    "image-safety": lambda: FinishBlocked("IMAGE_SAFETY", "Unable to show the generated image."),
    "text-only": lambda: TextOnly(),
    "malformed-json": lambda: MalformedJSON(),
    "proxy-page": lambda: RawResponse(502, "<html><body>Bad Gateway</body></html>"),
}


@pytest.mark.parametrize("name", list(BEHAVIOURS))
async def test_failures_map_as_for_generate_content(
    provider: GeminiProvider, fake_gemini: FakeGemini, name: str
) -> None:
    fake_gemini.enqueue(BEHAVIOURS[name](), BEHAVIOURS[name]())
    plain = await raised(provider, make_request())
    partials = Partials()
    stream = await raised(provider, streamed(partials))
    same_error(stream, plain)
    assert fake_gemini.requests[1].path == PATH
    assert partials.images == []


async def test_a_blocked_prompt_is_a_content_policy_violation(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(PromptBlocked("SAFETY"))
    error = await raised(provider, streamed(Partials()))
    assert isinstance(error, ContentPolicyViolation) and error.param == "prompt"


async def test_an_error_body_in_a_json_array_is_read(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    # Google's streaming form without alt=sse wraps an error in an array; read it either way.
    error = {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}
    fake_gemini.enqueue(json_answer(429, [{"error": error}]))
    raised_error = await raised(provider, streamed(Partials()))
    assert raised_error.message == "gemini returned HTTP 429: RESOURCE_EXHAUSTED quota"


@pytest.mark.parametrize(
    "answer",
    [Streamed(chunks=()), RawResponse(200, "[]", "application/json"), RawResponse(200, "", "text/event-stream")],
    ids=["no-events", "empty-json-array", "empty-body"],
)
async def test_a_2xx_without_events_is_a_bad_response(
    provider: GeminiProvider, fake_gemini: FakeGemini, answer: Any
) -> None:
    fake_gemini.enqueue(answer)
    error = await raised(provider, streamed(Partials()))
    assert error.code == "upstream_bad_response"
    assert error.message == "gemini sent a streamed answer without any events."


# --- upstreams that do not stream ------------------------------------------------------------


async def test_without_the_streamed_method_the_plain_call_makes_the_image(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    """A Gemini-compatible server with only generateContent: its 404 is followed by the plain call."""
    fake_gemini.stream_method = "missing"
    partials = Partials()
    result = await provider.run(streamed(partials))
    assert [r.path.rpartition(":")[2] for r in fake_gemini.requests] == ["streamGenerateContent", "generateContent"]
    assert [pixel_at(image.data) for image in result.images] == [color_for("a red fox in snow")]
    assert partials.images == []
    # The plain call is the streamed one's request, without the thoughts only a stream asked for.
    streamed_body, plain_body = (r.json for r in fake_gemini.requests)
    assert plain_body["contents"] == streamed_body["contents"]
    assert "thinkingConfig" not in plain_body["generationConfig"]


async def test_an_unknown_model_is_still_refused_without_the_streamed_method(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    fake_gemini.stream_method = "missing"
    fake_gemini.known_models = {"some-other-model"}
    plain = await raised(provider, make_request())
    stream = await raised(provider, streamed(Partials()))
    same_error(stream, plain)
    assert stream.upstream_status == 404


@pytest.mark.parametrize("status", [405, 501])
async def test_other_method_not_offered_statuses_also_fall_back(
    provider: GeminiProvider, fake_gemini: FakeGemini, status: int
) -> None:
    fake_gemini.enqueue(RawResponse(status, "Method Not Allowed", "text/plain"))
    result = await provider.run(streamed(Partials()))
    assert fake_gemini.requests[-1].path.endswith(":generateContent")
    assert len(result.images) == 1


async def test_a_streamed_call_answered_unstreamed_is_read_as_it_is(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    """A proxy that dropped `alt=sse`: Google's JSON array of the chunks, read in one piece (thought
    images in it still become partials) and with no second call."""
    fake_gemini.stream_method = "json"
    partials = Partials()
    result = await provider.run(streamed(partials))
    assert len(fake_gemini.requests) == 1
    assert [pixel_at(image.data) for image in result.images] == [color_for("a red fox in snow")]
    assert partials.colors() == [thought_color(0), thought_color(1)]
    assert result.text == "Here is your image: a red fox in snow"


async def test_a_streamed_call_answered_with_one_plain_response_is_read(
    provider: GeminiProvider, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(json_answer(200, image_chunk(FINAL, finishReason="STOP")))
    result = await provider.run(streamed(Partials()))
    assert len(fake_gemini.requests) == 1
    assert [bytes(image.data) for image in result.images] == [FINAL]


async def test_a_connection_dropped_mid_stream(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Streamed(drop_after=2))  # the thought text and the first thought image, then nothing
    partials = Partials()
    error = await raised(provider, streamed(partials))
    assert isinstance(error, UpstreamConnectionError)
    assert partials.colors() == [thought_color(0)]


async def test_the_size_cap_is_on_the_whole_stream(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    thoughts = tuple(thought_chunk(solid_png(8, 8, (i, i, i)) + b"\0" * 1500) for i in range(4))
    fake_gemini.enqueue(Streamed(chunks=(*thoughts, image_chunk(FINAL), finish_chunk())))
    provider.max_response_bytes = 6000  # each chunk (~2.2 KB) fits; all of them do not
    partials = Partials()
    error = await raised(provider, streamed(partials))
    assert isinstance(error, UpstreamResponseTooLarge)
    assert 0 < len(partials.images) < 4


async def test_a_cancelled_call_closes_the_stream(provider: GeminiProvider, fake_gemini: FakeGemini) -> None:
    chunks = (thought_chunk(solid_png(8, 8, (1, 2, 3))), image_chunk(FINAL), finish_chunk())
    fake_gemini.enqueue(Streamed(chunks=chunks, delay=30.0))  # the answer would be 30 s behind the thought
    partials = Partials()
    call = asyncio.create_task(provider.run(streamed(partials)))
    await asyncio.wait_for(partials.first.wait(), 10)
    call.cancel()  # what the gateway does when its client goes away
    with pytest.raises(asyncio.CancelledError):
        await call
    deadline = time.monotonic() + 5
    while fake_gemini.cancelled == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert fake_gemini.cancelled == 1  # the fake saw its client go away mid-stream
