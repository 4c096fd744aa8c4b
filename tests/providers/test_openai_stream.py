"""The OpenAI adapter's streamed call: the upstream's partial_image events reported as they arrive.

With `request.on_partial` set, the adapter asks the fake Images upstream (real loopback HTTP) for
its event stream (`stream: true`, `partial_images: N`, the provider wire-format reference 1.5),
reports each partial image as it arrives and returns the completed events' images and usage by
the same rules as the JSON answer: the tests compare the two calls on the same scripted behaviours.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import httpx
import pytest

from imagegate.catalog import load_builtin_catalog
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    NoImageGenerated,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
)
from imagegate.normalize import resolve_layout
from imagegate.providers import OpenAIProvider, ProviderRequest
from imagegate.providers.base import TokenSplit
from tests.fakes.hostile import json_answer
from tests.fakes.images import color_for, pixel_at, solid_png
from tests.fakes.openai_upstream import (
    INPUT_TOKENS_PER_IMAGE,
    OUTPUT_TOKENS_PER_IMAGE,
    FakeOpenAI,
    OpenAIError,
    RawResponse,
    Streamed,
    partial_color,
)

from .inputs import MASK, PNG
from .partials import Partials

MODEL = load_builtin_catalog().get("gpt-image-1")
assert MODEL is not None
BINDING = MODEL.providers["openai"]
PROMPT = "a red fox in snow"
FINAL = solid_png(16, 16, (10, 200, 30))


def make_request(
    prompt: str = PROMPT, *, partials: Partials | None = None, count: int = 2, **kwargs: Any
) -> ProviderRequest:
    mode = "edit" if kwargs.get("images") else "t2i"
    if partials is not None:
        kwargs.update(on_partial=partials, partial_images=count)
    return ProviderRequest(mode=mode, prompt=prompt, layout=resolve_layout(MODEL), binding=BINDING, **kwargs)


@pytest.fixture
def provider(fake_openai: FakeOpenAI, http: httpx.AsyncClient) -> OpenAIProvider:
    return OpenAIProvider(api_key=fake_openai.api_key, base_url=fake_openai.base_url, client=http)


async def raised(provider: OpenAIProvider, request: ProviderRequest) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request)
    return info.value


def sse(*events: Any) -> RawResponse:
    """A hand-written event stream: each item an event's data (a dict as JSON, bytes as they are)."""
    body = b"".join(
        b"data: " + (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n\n" for item in events
    )
    return RawResponse(200, body, "text/event-stream")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def completed(image: bytes = FINAL, **usage: Any) -> dict[str, Any]:
    return {"type": "image_generation.completed", "b64_json": b64(image), "usage": usage}


def partial(image: bytes, index: int = 0) -> dict[str, Any]:
    return {"type": "image_generation.partial_image", "b64_json": b64(image), "partial_image_index": index}


GPT_IMAGE_MODELS = {"gpt-image-1", "gpt-image-1.5", "gpt-image-2", "gpt-image-1-mini", "chatgpt-image-latest"}


def test_only_the_gpt_image_models_stream_partials_through_openai() -> None:
    streaming = set()
    for model in load_builtin_catalog():
        binding = model.providers.get("openai")
        handling = binding.handling("partial_images") if binding is not None else None
        if handling is not None and handling.handling == "emulated":
            streaming.add(model.id)
    assert streaming == GPT_IMAGE_MODELS  # Nano Banana Pro on an OpenAI-compatible gateway: no partials


# --- partials as they arrive -----------------------------------------------------------------


async def test_partials_arrive_in_order_before_the_call_returns(
    provider: OpenAIProvider, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(Streamed(delay=0.3))  # 2 partial images, then the completed event, each 0.3 s apart
    partials = Partials()
    call = asyncio.create_task(provider.run(make_request(partials=partials)))
    await asyncio.wait_for(partials.first.wait(), 10)
    # The first partial image is here while the fake still holds back the rest of the stream.
    assert not call.done()
    assert len(partials.images) == 1
    result = await call
    returned = time.monotonic()
    assert partials.colors() == [partial_color(0), partial_color(1)]  # arrival order, each its own image
    assert all(image.mime_type == "image/png" for image in partials.images)
    assert all(seen < returned for seen in partials.times)
    # The result is the completed event's image, with the usage the JSON answer would have given.
    assert [pixel_at(image.data)[:3] for image in result.images] == [color_for(PROMPT)]
    text_tokens = len(PROMPT.split())
    assert (result.input_tokens, result.output_tokens) == (text_tokens, OUTPUT_TOKENS_PER_IMAGE)
    assert result.input_details == TokenSplit(text_tokens=text_tokens)
    assert result.output_details == TokenSplit(image_tokens=OUTPUT_TOKENS_PER_IMAGE)


async def test_the_streamed_generation_asks_for_the_stream_and_the_partials(
    provider: OpenAIProvider, fake_openai: FakeOpenAI
) -> None:
    await provider.run(make_request())
    await provider.run(make_request(partials=Partials(), count=3))
    plain, stream = fake_openai.requests
    assert stream.path == plain.path == "/v1/images/generations"
    assert stream.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert (stream.json.pop("stream"), stream.json.pop("partial_images")) == (True, 3)
    assert stream.json == plain.json  # everything else as the JSON call
    assert "stream" not in plain.json and "partial_images" not in plain.json


async def test_a_multipart_edit_streams_with_form_fields(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    partials = Partials()
    result = await provider.run(make_request(images=(PNG,), mask=MASK, partials=partials, count=1))
    plain = await provider.run(make_request(images=(PNG,), mask=MASK))
    stream_call, plain_call = fake_openai.requests
    assert stream_call.path == "/v1/images/edits"
    assert stream_call.form is not None and plain_call.form is not None
    assert (stream_call.form.pop("stream"), stream_call.form.pop("partial_images")) == ("true", "1")
    assert stream_call.form == plain_call.form
    assert [part.field_name for part in stream_call.files or []] == ["image[]", "mask"]
    assert partials.colors() == [partial_color(0)]
    assert [image.data for image in result.images] == [image.data for image in plain.images]
    assert result.input_tokens == plain.input_tokens == len(PROMPT.split()) + INPUT_TOKENS_PER_IMAGE


async def test_several_completed_events_are_several_images(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    plain = await provider.run(make_request(n=3))
    result = await provider.run(make_request(n=3, partials=Partials()))
    assert len(result.images) == 3
    assert [image.data for image in result.images] == [image.data for image in plain.images]
    assert (result.input_tokens, result.output_tokens) == (plain.input_tokens, plain.output_tokens)
    assert (result.input_details, result.output_details) == (plain.input_details, plain.output_details)


async def test_a_done_sentinel_ends_the_stream(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Streamed(done=True))
    result = await provider.run(make_request(partials=Partials()))
    assert [pixel_at(image.data)[:3] for image in result.images] == [color_for(PROMPT)]


async def test_nothing_after_done_is_read(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(sse(completed(), b"[DONE]", {"error": {"message": "never read", "type": "server_error"}}))
    result = await provider.run(make_request(partials=Partials()))
    assert len(result.images) == 1


async def test_an_invalid_partial_image_is_skipped_and_logged(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    events = (partial(b"not an image at all"), partial(solid_png(8, 8, (1, 2, 3)), 1), completed())
    fake_openai.enqueue(sse(*events))
    partials = Partials()
    with caplog.at_level(logging.WARNING, logger="imagegate"):
        result = await provider.run(make_request(partials=partials))
    assert partials.colors() == [(1, 2, 3)]
    assert [pixel_at(image.data)[:3] for image in result.images] == [(10, 200, 30)]
    assert "partial image was skipped" in caplog.text


async def test_an_invalid_final_image_is_still_an_error(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(sse(completed(b"not an image at all")))
    error = await raised(provider, make_request(partials=Partials()))
    assert isinstance(error, UpstreamBadResponse)


async def test_unknown_events_are_ignored(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(sse({"type": "image_generation.in_progress"}, {"no": "type"}, completed(input_tokens=5)))
    result = await provider.run(make_request(partials=Partials()))
    assert len(result.images) == 1 and result.input_tokens == 5


async def test_without_a_listener_nothing_is_streamed(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    result = await provider.run(make_request(partial_images=2))  # a count alone does not stream
    [recorded] = fake_openai.requests
    assert "stream" not in recorded.json and "partial_images" not in recorded.json
    assert len(result.images) == 1


# --- failures, as the JSON answer's ----------------------------------------------------------

ERRORS = {
    "policy": OpenAIError(400, "Your request was rejected by the safety system.", code="moderation_blocked"),
    "invalid": OpenAIError(400, "Invalid value for 'size'.", param="size", code="invalid_value"),
    "rate-limited": OpenAIError(429, "Rate limit reached for images.", type="requests", code="rate_limit_exceeded"),
    "server-error": OpenAIError(
        500, "The server had an error processing your request.", type="server_error", code="server_error"
    ),
}
CLASSES = {
    "policy": ContentPolicyViolation,
    "invalid": UpstreamRejectedRequest,
    "rate-limited": UpstreamRateLimited,
    "server-error": UpstreamError,
}


def same_mapping(one: ImagegateError, other: ImagegateError) -> None:
    assert type(one) is type(other)
    assert (one.code, one.param, one.retry_after, one.status_code) == (
        other.code,
        other.param,
        other.retry_after,
        other.status_code,
    )


# The Responses API's flat form has no error `type`, only a `code`: each case but "invalid" (whose
# meaning is in its type) says what it is by its code.
EVENT_CASES = [(name, False) for name in ERRORS] + [(name, True) for name in ERRORS if name != "invalid"]


@pytest.mark.parametrize(
    ("name", "flat"), EVENT_CASES, ids=[f"{n}-{'flat' if f else 'object'}" for n, f in EVENT_CASES]
)
async def test_an_error_event_mid_stream_maps_as_the_error_answer_does(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, name: str, flat: bool
) -> None:
    error = ERRORS[name]
    fake_openai.enqueue(error, Streamed(error=error, error_after=1, flat=flat))
    plain = await raised(provider, make_request())
    partials = Partials()
    streamed = await raised(provider, make_request(partials=partials))
    same_mapping(streamed, plain)
    assert type(streamed) is CLASSES[name]
    assert error.message in streamed.message
    assert "HTTP" not in streamed.message  # no status the stream never had
    assert streamed.upstream_status is None
    assert partials.colors() == [partial_color(0)]  # what came before the error was reported


async def test_an_error_event_that_says_nothing_of_its_kind_is_the_upstream_s_failure(
    provider: OpenAIProvider, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(sse(partial(solid_png(8, 8, (1, 2, 3))), {"type": "error", "message": "it broke"}))
    error = await raised(provider, make_request(partials=Partials()))
    assert type(error) is UpstreamError and error.status_code == 502
    assert error.message == "openai sent an error in its event stream: it broke"


@pytest.mark.parametrize("name", list(ERRORS))
async def test_an_error_answer_to_the_streamed_call_maps_as_for_the_json_call(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, name: str
) -> None:
    fake_openai.enqueue(ERRORS[name], ERRORS[name])
    plain = await raised(provider, make_request())
    streamed = await raised(provider, make_request(partials=Partials()))
    same_mapping(streamed, plain)
    assert (streamed.message, streamed.upstream_status) == (plain.message, plain.upstream_status)
    assert fake_openai.requests[1].json["stream"] is True  # the streamed call, answered before its stream


@pytest.mark.parametrize(
    "answer",
    [sse(), RawResponse(200, "", "text/event-stream")],
    ids=["no-events", "empty-body"],
)
async def test_a_2xx_without_events_is_a_bad_response(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, answer: Any
) -> None:
    fake_openai.enqueue(answer)
    error = await raised(provider, make_request(partials=Partials()))
    assert isinstance(error, UpstreamBadResponse)
    assert error.message == "openai sent a streamed answer without any events."


async def test_a_server_that_ignores_stream_is_read_as_a_plain_answer(
    provider: OpenAIProvider, fake_openai: FakeOpenAI
) -> None:
    """An OpenAI-compatible server that does not stream answers its plain JSON: the image comes, with
    no partial images, from that one call."""
    image = solid_png(8, 8, (1, 2, 3))
    fake_openai.enqueue(json_answer(200, {"created": 1, "data": [{"b64_json": base64.b64encode(image).decode()}]}))
    partials = Partials()
    result = await provider.run(make_request(partials=partials))
    assert [bytes(i.data) for i in result.images] == [image]
    assert partials.images == [] and len(fake_openai.requests) == 1


async def test_an_unstreamed_answer_without_images_is_no_image(
    provider: OpenAIProvider, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(RawResponse(200, '{"created": 1, "data": []}', "application/json"))
    error = await raised(provider, make_request(partials=Partials()))
    assert isinstance(error, NoImageGenerated) and error.message == "openai returned no images."


async def test_a_stream_without_a_completed_event_is_no_image(
    provider: OpenAIProvider, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(sse(partial(solid_png(8, 8, (1, 2, 3)))))
    partials = Partials()
    error = await raised(provider, make_request(partials=partials))
    assert isinstance(error, NoImageGenerated)
    assert partials.colors() == [(1, 2, 3)]  # reported all the same: the stream had it


async def test_an_event_that_is_not_json_is_a_bad_response(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(sse(b'{"type": "image_generation.completed", "b64_json": '))
    error = await raised(provider, make_request(partials=Partials()))
    assert isinstance(error, UpstreamBadResponse) and "not valid JSON" in error.message


async def test_a_connection_dropped_mid_stream(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Streamed(drop_after=1))  # the first partial image, then nothing
    partials = Partials()
    error = await raised(provider, make_request(partials=partials))
    assert isinstance(error, UpstreamConnectionError)
    assert partials.colors() == [partial_color(0)]


async def test_a_cancelled_call_closes_the_stream(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(Streamed(delay=30.0))  # the second partial would be 30 s behind the first
    partials = Partials()
    call = asyncio.create_task(provider.run(make_request(partials=partials)))
    await asyncio.wait_for(partials.first.wait(), 10)
    call.cancel()  # what the gateway does when its client goes away
    with pytest.raises(asyncio.CancelledError):
        await call
    deadline = time.monotonic() + 5
    while fake_openai.cancelled == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert fake_openai.cancelled == 1  # the fake saw its client go away mid-stream
