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


def test_the_prompt_picks_the_palette_and_the_seed_varies_the_picture() -> None:
    assert palette_for("a") == palette_for("a") != palette_for("b")
    assert draw("a", 70, 10, seed=1, pattern="bars").tobytes() == draw("a", 70, 10, seed=1, pattern="bars").tobytes()
    assert draw("a", 70, 10, seed=1, pattern="bars").tobytes() != draw("a", 70, 10, seed=2, pattern="bars").tobytes()
