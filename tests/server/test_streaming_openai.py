"""stream: true for the GPT image models end to end: the official openai SDK -> a real gateway -> the
fake OpenAI Images upstream, which streams as OpenAI does (the provider wire-format reference 1.5):
its partial_image events reach the client as they arrive, then the completed event."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import pytest

from ..conftest import RunningGateway
from ..fakes.images import color_for, detect_mime, pixel_at, solid_png
from ..fakes.openai_upstream import FakeOpenAI, Streamed, partial_color


@pytest.fixture
def gpt(gateway_factory: Any, fake_openai: FakeOpenAI) -> RunningGateway:
    """A gateway whose only provider is the fake OpenAI upstream, with the real model rules."""
    fake_openai.with_gpt_image_rules()
    gw: RunningGateway = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    return gw


def extra(event: Any, name: str) -> Any:
    """A field imagegate adds to OpenAI's event (the SDK keeps unknown fields)."""
    return (event.model_extra or {})[name]


def test_partial_images_arrive_while_the_upstream_still_holds_the_final_image(
    gpt: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    gate = threading.Event()
    # Should the partials never come, the gate opens on its own and the test fails, not hangs
    # (the gateway's keep-alive comments would hold the SDK's reads open for ever).
    watchdog = threading.Timer(30, gate.set)
    watchdog.start()
    fake_openai.enqueue(Streamed(gate=gate))
    stream = gpt.client().images.generate(model="gpt-image-1", prompt="a fox", stream=True, partial_images=2)
    events = iter(stream)
    try:
        partials = [next(events), next(events)]  # both arrive while the completed event is held upstream
        assert not gate.is_set()
    finally:
        watchdog.cancel()
    assert [(e.type, e.partial_image_index) for e in partials] == [
        ("image_generation.partial_image", i) for i in (0, 1)
    ]
    for index, event in enumerate(partials):
        data = base64.b64decode(event.b64_json)
        assert detect_mime(data) == "image/png" and pixel_at(data)[:3] == partial_color(index)
    gate.set()
    rest = list(events)
    assert [e.type for e in rest] == ["image_generation.completed"]
    final = base64.b64decode(rest[0].b64_json)
    assert pixel_at(final)[:3] == color_for("a fox")
    assert rest[0].usage.output_tokens > 0
    assert extra(rest[0], "adjustments") == []
    [sent] = fake_openai.requests
    assert (sent.json["stream"], sent.json["partial_images"]) == (True, 2)


def test_an_edit_streams_the_upstream_s_partial_image(gpt: RunningGateway, fake_openai: FakeOpenAI) -> None:
    events = list(
        gpt.client().images.edit(
            model="gpt-image-1",
            image=("in.png", io.BytesIO(solid_png(64, 64, (0, 128, 0))), "image/png"),
            prompt="p",
            stream=True,
            partial_images=1,
        )
    )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert pixel_at(base64.b64decode(events[0].b64_json))[:3] == partial_color(0)
    [sent] = fake_openai.requests
    assert sent.form is not None and (sent.form["stream"], sent.form["partial_images"]) == ("true", "1")
