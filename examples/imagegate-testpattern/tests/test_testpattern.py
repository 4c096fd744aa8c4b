"""How to test an imagegate plugin: install it (`pip install -e .`, so that its entry point is
there), then drive a real gateway in-process with the official openai SDK, whose HTTP client is
Starlette's TestClient (an httpx.Client). No server, no socket, no key."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from imagegate.config import Settings
from imagegate.plugins import load_registry
from imagegate.server.app import create_app
from openai import OpenAI
from PIL import Image
from starlette.testclient import TestClient

from imagegate_testpattern.patterns import draw, palette_for


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    assert load_registry().get("testpattern") is not None, "install the plugin first: pip install -e ."
    app = create_app(Settings(data_dir=tmp_path, api_keys="test-key"))
    with TestClient(app) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key="test-key", http_client=http, max_retries=0)


def test_the_model_is_served_with_no_setting(client: OpenAI) -> None:
    assert "testpattern" in [model.id for model in client.models.list()]
    response = client.images.with_raw_response.generate(
        model="testpattern", prompt="hello", size="96x64", response_format="b64_json", output_format="jpeg"
    )
    assert response.headers["x-imagegate-provider"] == "testpattern"
    data = base64.b64decode(response.parse().data[0].b64_json or "")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (96, 64))


def test_edit_opacity_is_a_setting(tmp_path: Path) -> None:
    """Settings(<id>_<name>=...) is one of the places a provider setting comes from: at opacity 0
    an edit is the input image itself."""
    green = Image.new("RGB", (32, 32), (10, 200, 30))
    upload = io.BytesIO()
    green.save(upload, "PNG")
    app = create_app(Settings(data_dir=tmp_path, api_keys="k", testpattern_edit_opacity="0"))
    with TestClient(app) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)
        result = client.images.edit(
            model="testpattern",
            prompt="p",
            image=("in.png", upload.getvalue(), "image/png"),
            response_format="b64_json",
        )
    with Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or ""))) as edited:
        assert edited.convert("RGB").getcolors() == [(edited.width * edited.height, (10, 200, 30))]


def test_the_prompt_picks_the_palette_and_the_seed_varies_the_picture() -> None:
    assert palette_for("a") == palette_for("a") != palette_for("b")
    assert draw("a", 70, 10, seed=1, pattern="bars").tobytes() == draw("a", 70, 10, seed=1, pattern="bars").tobytes()
    assert draw("a", 70, 10, seed=1, pattern="bars").tobytes() != draw("a", 70, 10, seed=2, pattern="bars").tobytes()
