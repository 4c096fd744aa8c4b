"""gzip for the web pages, their assets and the OpenAPI document (server/middleware.COMPRESSED),
and never for the image API, whose answers are already compressed images."""

from __future__ import annotations

import gzip

import httpx
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini

GZIP = {"accept-encoding": "gzip"}
TEXT_PATHS = [
    "/",
    "/models",
    "/models/gemini-3-pro-image-preview",
    "/docs",
    "/openapi.json",
    "/static/playground.js",
    "/static/playground.css",
    "/docs/static/docs.css",
]


def raw_get(url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """The answer and its body as sent (httpx would undo the gzip)."""
    with httpx.stream("GET", url, headers=headers) as response:
        return response, b"".join(response.iter_raw())


@pytest.mark.parametrize("path", TEXT_PATHS)
def test_pages_and_their_assets_are_gzipped_when_asked(gateway: RunningGateway, path: str) -> None:
    response, sent = raw_get(f"{gateway.url}{path}", GZIP)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    plain, plain_sent = raw_get(f"{gateway.url}{path}", {"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert gzip.decompress(sent) == plain_sent  # the same page, smaller
    assert len(sent) < len(plain_sent) / 2


def test_the_pages_keep_their_headers_when_gzipped(gateway: RunningGateway) -> None:
    response, _ = raw_get(f"{gateway.url}/", GZIP)
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_the_image_api_is_never_gzipped(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    auth = {"authorization": f"Bearer {API_KEY}", **GZIP}
    body = {"model": "gemini-3-pro-image-preview", "prompt": "a fox", "response_format": "b64_json"}
    with httpx.stream("POST", f"{gateway.url}/v1/images/generations", json=body, headers=auth, timeout=60) as answer:
        answer.read()
    assert answer.status_code == 200 and "content-encoding" not in answer.headers
    models, _ = raw_get(f"{gateway.url}/v1/models", auth)
    assert models.status_code == 200 and "content-encoding" not in models.headers
