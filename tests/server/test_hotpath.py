"""The hot path's shape, end to end through the openai SDK (performance itself is in bench/).

- Gemini's base64 goes out as b64_json as the very bytes the upstream sent, never decoded whole.
- A url answer that needs no conversion writes the file from the base64 a chunk at a time: no
  whole decoded copy of the image is ever made.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from imagegate import imaging
from imagegate.catalog import ModelEntry, load_builtin_catalog
from imagegate.normalize import resolve_layout
from imagegate.outputs import OutputImage
from imagegate.pipeline import ImagesOutcome
from imagegate.server.render import PiecesResponse, body_of, images_response

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini
from ..fakes.images import image_size, solid_png

_model = load_builtin_catalog().get("gemini-3-pro-image-preview")
assert _model is not None
MODEL: ModelEntry = _model

PRO = "gemini-3-pro-image-preview"


@pytest.fixture
def no_whole_decode(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Fails any whole decode of base64 (ImageBytes.read / .data); returns the chunk sizes written."""
    written: list[int] = []
    chunks = imaging.ImageBytes.chunks

    def refuse(self: imaging.ImageBytes) -> bytes:
        raise AssertionError("the whole image was decoded")

    def counted(self: imaging.ImageBytes):  # type: ignore[no-untyped-def]
        for chunk in chunks(self):
            written.append(len(chunk))
            yield chunk

    monkeypatch.setattr(imaging.ImageBytes, "read", refuse)
    monkeypatch.setattr(imaging.ImageBytes, "chunks", counted)
    return written


@pytest.mark.parametrize("response_format", ["url", None])  # None: the default, url and b64_json
def test_a_hosted_image_is_decoded_into_its_file_without_a_whole_copy(
    gateway: RunningGateway,
    fake_gemini: FakeGemini,
    no_whole_decode: list[int],
    response_format: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imaging, "B64_CHUNK_CHARS", 256)  # the test image is small: several chunks
    extra = {"response_format": response_format} if response_format else {}
    result = gateway.client().images.generate(model=PRO, prompt="a fox", **extra)  # type: ignore[arg-type]
    item = result.data[0] if result.data else None
    assert item is not None and item.url
    stored = httpx.get(item.url).content
    assert image_size(stored) == (1024, 1024)
    assert len(no_whole_decode) > 2 and sum(no_whole_decode) >= len(stored)
    if response_format is None:
        assert stored == base64.b64decode(item.b64_json or "")


def test_the_server_runs_on_uvloop_unless_accept_may_fail() -> None:
    """uvloop where the connection cap stays under the descriptor limit; asyncio's loop (which
    keeps and reports EMFILE'd connections, tests/server/test_slow_connections.py) where it does not."""
    import uvloop

    from imagegate.server.serving import ConnectionLimits, fast_loop, loop_for

    assert loop_for(ConnectionLimits(10.0, 10.0, max_connections=700), 1024).endswith(":fast_loop")
    assert loop_for(ConnectionLimits(10.0, 10.0, max_connections=1024), 1024).endswith(":guarded_loop")
    loop = fast_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_the_server_parses_http_with_httptools_under_the_same_guards() -> None:
    """tests/server/test_slow_connections.py and test_serving_logs.py hold the guards to their
    behaviour on this served protocol."""
    from imagegate.config import Settings
    from imagegate.server.serving import GuardedHttpToolsProtocol, build_config

    assert build_config(object(), Settings()).http is GuardedHttpToolsProtocol


def test_a_b64_json_answer_sends_the_upstreams_base64_without_joining_it_into_a_new_body() -> None:
    """The answer is sent as pieces: the image's base64 is the very buffer it came in (a view
    of the upstream's body), and the pieces make the exact JSON a client parses."""
    png = solid_png(8, 8, (1, 2, 3))
    upstream = b'{"data":"' + base64.b64encode(png) + b'"}'
    view = memoryview(upstream)[9:-2]
    blob = imaging.ImageBytes(b64=view)
    outcome = ImagesOutcome(
        created=1,
        model="m",
        provider="p",
        layout=resolve_layout(MODEL),
        images=[OutputImage(blob, "png", 8, 8)],
        response_format="b64_json",
        seed=None,
        adjustments=[],
        cost=0.0,
        currency="USD",
        cost_estimated=False,
        input_tokens=0,
        output_tokens=0,
    )
    response = images_response(outcome)
    assert isinstance(response, PiecesResponse)
    assert any(piece is view for piece in response.pieces)
    body = body_of(response)
    assert dict(response.headers)["content-length"] == str(len(body))
    assert base64.b64decode(json.loads(body)["data"][0]["b64_json"]) == png
