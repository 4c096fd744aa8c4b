"""POST /v1/images/edits end to end: the official openai SDK -> a real gateway -> fake upstreams.

Covers multipart (`image`, `image[]`, `mask`) and the JSON form (`images` refs), input checks
(formats, truncation, pixel and byte caps), the Gemini mask emulation (compositing), URL
fetching with the SSRF guard, and edits routed to an OpenAI-compatible upstream.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import ImagesResponse
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import PRO_SIZES, FakeGemini
from ..fakes.images import color_for, image_size, pixel_at, solid_jpeg, solid_png, solid_webp
from ..fakes.openai_upstream import FakeOpenAI
from ..fakes.server import LoopbackServer

MODEL = "gemini-3-pro-image-preview"
EDIT_PATH = "/images/edits"
FileTuple = tuple[str, bytes, str]


# --- helpers ---------------------------------------------------------------------------------


def png_file(data: bytes, name: str = "image.png") -> FileTuple:
    return (name, data, "image/png")


def noise_png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """Incompressible PNG (random pixels) for byte-size tests and truncation."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    raw = random.Random(seed).randbytes(width * height * channels)
    out = io.BytesIO()
    Image.frombytes(mode, (width, height), raw).save(out, "PNG", compress_level=1)
    return out.getvalue()


def half_mask(width: int, height: int) -> bytes:
    """RGBA mask: left half opaque (keep the original), right half transparent (edit)."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    img.paste((0, 0, 0, 255), (0, 0, width // 2, height))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def gif_bytes(width: int = 16, height: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, "GIF")
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=4)
def bilevel_png(width: int, height: int) -> bytes:
    """A real, valid mode-"1" PNG of all-black pixels, written by hand so that a 400-megapixel
    image costs a fraction of a second (and ~50 KB) instead of a Pillow encode."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "None" + packed bits
    compressor = zlib.compressobj(9)
    parts: list[bytes] = []
    left = height
    while left > 0:
        rows = min(left, 1000)
        parts.append(compressor.compress(row * rows))
        left -= rows
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def b64_images(resp: ImagesResponse) -> list[bytes]:
    assert resp.data, resp
    return [base64.b64decode(item.b64_json or "") for item in resp.data]


def inline_parts(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(mime, bytes) of every inline image part in a recorded generateContent body."""
    out: list[tuple[str, bytes]] = []
    for part in body["contents"][0]["parts"]:
        blob = part.get("inline_data") or part.get("inlineData")
        if blob is not None:
            mime = blob.get("mime_type") or blob.get("mimeType")
            out.append((mime, base64.b64decode(blob["data"])))
    return out


def image_config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig") or body.get("generation_config") or {}
    result: dict[str, Any] = config.get("imageConfig") or config.get("image_config") or {}
    return result


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body: dict[str, Any] = exc.response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def sdk_edit(client: OpenAI, image: Any, prompt: str = "make it brighter", **kwargs: Any) -> ImagesResponse:
    kwargs.setdefault("response_format", "b64_json")
    return client.images.edit(image=image, prompt=prompt, model=MODEL, **kwargs)


def json_edit(client: OpenAI, body: dict[str, Any]) -> ImagesResponse:
    return client.post(EDIT_PATH, body=body, cast_to=ImagesResponse)


def gemini_gateway(gateway_factory: Any, fake: FakeGemini, **overrides: Any) -> RunningGateway:
    gw: RunningGateway = gateway_factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **overrides)
    return gw


def raw_post(gw: RunningGateway, *, content_type: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}"}
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(f"{gw.url}/v1/images/edits", headers=headers, timeout=30, **kwargs)


def multipart_body(boundary: str, fields: list[tuple[str, str]]) -> bytes:
    """A multipart body of text fields only (httpx sends multipart only when there is a file)."""
    out = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n' for name, value in fields
    )
    return (out + f"--{boundary}--\r\n").encode()


SERVED_PNG = solid_png(40, 30, (0, 120, 255))


@pytest.fixture
def image_server() -> Iterator[tuple[str, list[str]]]:
    """A tiny loopback file server: GET /a.png is a 40x30 PNG; returns (root URL, paths hit)."""
    hits: list[str] = []

    async def serve(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(SERVED_PNG, media_type="image/png")

    with LoopbackServer(Starlette(routes=[Route("/{name}", serve)])) as server:
        yield server.url, hits


# --- 1, 2: images reach Gemini as inline parts -------------------------------------------------


def test_single_image_edit_multipart(client: OpenAI, fake_gemini: FakeGemini) -> None:
    source = solid_png(64, 64, (10, 20, 30))
    resp = sdk_edit(client, png_file(source), prompt="turn it into a watercolor")
    assert len(b64_images(resp)) == 1
    assert len(fake_gemini.requests) == 1
    body = fake_gemini.requests[0].json
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": "turn it into a watercolor"}
    assert inline_parts(body) == [("image/png", source)]
    # The answer is the fake's final image, not its interim "thought" image.
    (out,) = b64_images(resp)
    assert image_size(out) == PRO_SIZES[("1:1", "1K")]
    assert pixel_at(out)[:3] == color_for("turn it into a watercolor")


def test_several_images_via_sdk_keep_order_and_mime(client: OpenAI, fake_gemini: FakeGemini) -> None:
    png, jpeg, webp = solid_png(32, 32, (1, 2, 3)), solid_jpeg(32, 32, (200, 10, 10)), solid_webp(32, 32)
    resp = sdk_edit(client, [png_file(png, "a.png"), ("b.jpg", jpeg, "image/jpeg"), ("c.webp", webp, "image/webp")])
    assert len(resp.data or []) == 1
    assert inline_parts(fake_gemini.requests[0].json) == [
        ("image/png", png),
        ("image/jpeg", jpeg),
        ("image/webp", webp),
    ]


def test_repeated_plain_image_field_like_curl(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    first, second = solid_png(48, 48, (9, 9, 9)), solid_jpeg(48, 48, (90, 90, 90))
    resp = raw_post(
        gateway,
        data={"prompt": "merge them", "model": MODEL, "response_format": "b64_json"},
        files=[("image", ("a.png", first, "image/png")), ("image", ("b.jpg", second, "image/jpeg"))],
    )
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 1
    assert inline_parts(fake_gemini.requests[0].json) == [("image/png", first), ("image/jpeg", second)]


def test_mime_type_comes_from_bytes_not_from_the_upload_header(client: OpenAI, fake_gemini: FakeGemini) -> None:
    """A JPEG uploaded as "x.png" with content-type image/png must reach Gemini as image/jpeg
    (Gemini rejects a declared mime type that does not match the data)."""
    jpeg = solid_jpeg(32, 32, (50, 60, 70))
    sdk_edit(client, ("x.png", jpeg, "image/png"))
    assert inline_parts(fake_gemini.requests[0].json) == [("image/jpeg", jpeg)]


# --- 3: edits keep the input's shape ----------------------------------------------------------


def test_edit_keeps_first_image_shape(client: OpenAI, fake_gemini: FakeGemini) -> None:
    resp = sdk_edit(client, png_file(solid_png(600, 800)))
    assert image_config(fake_gemini.requests[0].json)["aspectRatio"] == "3:4"
    effective = (resp.model_extra or {})["effective"]
    assert (effective["width"], effective["height"]) == (887, 1182)
    assert effective["aspect_ratio"] == "3:4"
    assert image_size(b64_images(resp)[0]) == (887, 1182)


def test_edit_explicit_aspect_ratio_overrides_input_shape(client: OpenAI, fake_gemini: FakeGemini) -> None:
    resp = sdk_edit(client, png_file(solid_png(600, 800)), extra_body={"aspect_ratio": "16:9"})
    assert image_config(fake_gemini.requests[0].json)["aspectRatio"] == "16:9"
    effective = (resp.model_extra or {})["effective"]
    assert (effective["width"], effective["height"]) == (1365, 768)


def test_edit_shape_follows_first_image_not_later_ones(client: OpenAI, fake_gemini: FakeGemini) -> None:
    resp = sdk_edit(client, [png_file(solid_png(800, 450), "wide.png"), png_file(solid_png(450, 800), "tall.png")])
    assert image_config(fake_gemini.requests[0].json)["aspectRatio"] == "16:9"
    assert (resp.model_extra or {})["effective"]["aspect_ratio"] == "16:9"


# --- 4, 5: masks --------------------------------------------------------------------------------

MASK_PROMPT = "paint the right side blue"


def fake_gemini_colour(body: dict[str, Any]) -> tuple[int, int, int]:
    """FakeGemini paints color_for(all user text parts joined by newlines)."""
    texts = [p["text"] for p in body["contents"][0]["parts"] if "text" in p]
    colour = color_for("\n".join(texts))
    assert abs(colour[0] - 255) + colour[1] + colour[2] > 150  # precondition: clearly not red
    return colour


def test_mask_is_emulated_by_compositing_for_gemini(client: OpenAI, fake_gemini: FakeGemini) -> None:
    red = solid_png(64, 64, (255, 0, 0))
    mask = half_mask(64, 64)
    resp = sdk_edit(client, png_file(red), prompt=MASK_PROMPT, mask=png_file(mask, "mask.png"))
    (out,) = b64_images(resp)
    assert image_size(out) == (1024, 1024)
    body = fake_gemini.requests[0].json
    left, right = pixel_at(out, 100, 512)[:3], pixel_at(out, 900, 512)[:3]
    assert all(abs(a - b) <= 3 for a, b in zip(left, (255, 0, 0), strict=True)), left
    assert all(abs(a - b) <= 3 for a, b in zip(right, fake_gemini_colour(body), strict=True)), right
    # Gemini got the mask as an extra image after a text part that explains it.
    parts = body["contents"][0]["parts"]
    assert inline_parts(body) == [("image/png", red), ("image/png", mask)]
    mask_index = max(i for i, p in enumerate(parts) if "inline_data" in p or "inlineData" in p)
    assert "mask" in parts[mask_index - 1].get("text", "").lower()


def test_mask_of_other_size_is_rejected(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, png_file(solid_png(64, 64)), mask=png_file(half_mask(32, 32), "mask.png"))
    assert error_of(info.value)["param"] == "mask"
    assert fake_gemini.requests == []


def test_jpeg_mask_is_rejected(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, png_file(solid_png(64, 64)), mask=("mask.jpg", solid_jpeg(64, 64), "image/jpeg"))
    assert error_of(info.value)["param"] == "mask"
    assert fake_gemini.requests == []


# --- 6: bad uploads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upload",
    [
        pytest.param(("notes.txt", b"hello, this is not an image\n" * 10, "text/plain"), id="text"),
        pytest.param(("anim.gif", gif_bytes(), "image/gif"), id="gif"),
        pytest.param(("cut.png", noise_png(64, 64)[:100], "image/png"), id="truncated-png"),
        pytest.param(("lie.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png"), id="png-magic-only"),
    ],
)
def test_bad_image_uploads_are_400_invalid_image(client: OpenAI, fake_gemini: FakeGemini, upload: FileTuple) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, upload)
    error = error_of(info.value)
    assert (error["param"], error["code"]) == ("image", "invalid_image")
    assert error["type"] == "invalid_request_error"
    assert fake_gemini.requests == []


def test_one_bad_image_among_good_ones_is_rejected(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, [png_file(solid_png(16, 16)), ("b.gif", gif_bytes(), "image/gif")])
    assert error_of(info.value)["param"] == "image"
    assert fake_gemini.requests == []


def test_too_many_images(client: OpenAI, fake_gemini: FakeGemini) -> None:
    images = [png_file(solid_png(8, 8, (i, i, i)), f"{i}.png") for i in range(15)]
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, images)
    assert error_of(info.value)["param"] == "image"
    assert fake_gemini.requests == []


def test_fourteen_images_is_the_maximum_and_accepted(client: OpenAI, fake_gemini: FakeGemini) -> None:
    images = [png_file(solid_png(8, 8, (i, i, i)), f"{i}.png") for i in range(14)]
    sdk_edit(client, images)
    assert len(inline_parts(fake_gemini.requests[0].json)) == 14


def test_edit_without_image(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    boundary = "imagegate-test-boundary"
    resp = raw_post(
        gateway,
        content=multipart_body(boundary, [("prompt", "no picture"), ("model", MODEL)]),
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "image"
    assert error["code"] == "missing_required_parameter"
    assert fake_gemini.requests == []


# --- 7: decompression bombs ---------------------------------------------------------------------


def test_handmade_bilevel_png_is_a_real_png() -> None:
    data = bilevel_png(50, 40)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert (img.mode, img.size) == ("1", (50, 40))
        assert img.getpixel((49, 39)) == 0


def test_decompression_bomb_is_refused_from_the_header(client: OpenAI, fake_gemini: FakeGemini) -> None:
    bomb = bilevel_png(20000, 20000)  # 400 megapixels
    assert len(bomb) < 200_000  # it compresses: a small upload
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, png_file(bomb, "bomb.png"))
    error = error_of(info.value)
    assert (error["param"], error["code"]) == ("image", "invalid_image")
    assert "pixels" in error["message"]
    assert fake_gemini.requests == []
    # The server survived and still serves.
    assert len(sdk_edit(client, png_file(solid_png(16, 16))).data or []) == 1


def test_bomb_as_mask_is_refused(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, png_file(solid_png(16, 16)), mask=png_file(bilevel_png(20000, 20000), "mask.png"))
    error = error_of(info.value)
    assert error["param"] == "mask"
    assert "pixels" in error["message"]


def test_configured_pixel_cap(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    client = gemini_gateway(gateway_factory, fake_gemini, max_image_pixels=1_000_000).client()
    with pytest.raises(openai.BadRequestError) as info:
        sdk_edit(client, png_file(bilevel_png(2000, 2000)))
    error = error_of(info.value)
    assert (error["param"], error["code"]) == ("image", "invalid_image")
    assert "pixels" in error["message"]
    # Exactly at the cap is allowed.
    sdk_edit(client, png_file(bilevel_png(1000, 1000)))
    assert len(fake_gemini.requests) == 1


# --- 8: byte caps -------------------------------------------------------------------------------


def test_request_body_cap_is_413(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    client = gemini_gateway(gateway_factory, fake_gemini, max_upload_bytes=200_000).client()
    big = noise_png(320, 320)  # ~300 KB of random pixels
    assert 250_000 < len(big) < 400_000
    with pytest.raises(openai.APIStatusError) as info:
        sdk_edit(client, png_file(big))
    assert info.value.status_code == 413
    error = error_of(info.value)
    assert error["code"] == "payload_too_large"
    assert fake_gemini.requests == []


def test_request_body_cap_without_content_length(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    """A chunked upload (no Content-Length) is counted as it streams in."""
    gw = gemini_gateway(gateway_factory, fake_gemini, max_upload_bytes=200_000)
    boundary = "cap-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    payload = noise_png(320, 320)

    def chunks() -> Iterator[bytes]:
        yield head
        for i in range(0, len(payload), 16_384):
            yield payload[i : i + 16_384]
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = raw_post(gw, content=chunks(), content_type=f"multipart/form-data; boundary={boundary}")
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert fake_gemini.requests == []


def test_per_image_byte_cap(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    client = gemini_gateway(gateway_factory, fake_gemini, max_image_bytes=20_000).client()
    with pytest.raises(openai.APIStatusError) as info:
        sdk_edit(client, [png_file(solid_png(16, 16)), png_file(noise_png(100, 100), "big.png")])
    assert info.value.status_code in (400, 413)
    error = error_of(info.value)
    assert error["param"] == "image"
    assert error["code"] == "payload_too_large"
    # A data URI in the JSON form is held to the same cap.
    with pytest.raises(openai.APIStatusError) as info:
        json_edit(client, {"model": MODEL, "prompt": "x", "images": [{"image_url": data_uri(noise_png(100, 100))}]})
    assert info.value.status_code in (400, 413)
    assert error_of(info.value)["param"] == "images"
    assert fake_gemini.requests == []


# --- 9: JSON edits ------------------------------------------------------------------------------


def test_json_edit_with_data_uri(client: OpenAI, fake_gemini: FakeGemini) -> None:
    source = solid_png(30, 40, (5, 6, 7))
    resp = json_edit(
        client,
        {
            "model": MODEL,
            "prompt": "json edit",
            "response_format": "b64_json",
            "images": [{"image_url": data_uri(source)}],
        },
    )
    assert len(b64_images(resp)) == 1
    assert inline_parts(fake_gemini.requests[0].json) == [("image/png", source)]
    assert image_config(fake_gemini.requests[0].json)["aspectRatio"] == "3:4"


def test_json_edit_with_http_url(client: OpenAI, fake_gemini: FakeGemini, image_server: tuple[str, list[str]]) -> None:
    root, hits = image_server
    resp = json_edit(client, {"model": MODEL, "prompt": "from a url", "images": [{"image_url": f"{root}/a.png"}]})
    assert len(resp.data or []) == 1
    assert hits == ["/a.png"]
    assert inline_parts(fake_gemini.requests[0].json) == [("image/png", SERVED_PNG)]


def test_json_edit_with_file_id_is_rejected(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(client, {"model": MODEL, "prompt": "x", "images": [{"file_id": "x"}]})
    assert error_of(info.value)["param"] == "images"
    assert fake_gemini.requests == []


def test_json_edit_without_images(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(client, {"model": MODEL, "prompt": "x", "images": []})
    assert error_of(info.value)["param"] == "images"
    assert fake_gemini.requests == []


def test_json_edit_with_data_uri_mask(client: OpenAI, fake_gemini: FakeGemini) -> None:
    red, mask = solid_png(64, 64, (255, 0, 0)), half_mask(64, 64)
    resp = json_edit(
        client,
        {
            "model": MODEL,
            "prompt": MASK_PROMPT,
            "response_format": "b64_json",
            "images": [{"image_url": data_uri(red)}],
            "mask": {"image_url": data_uri(mask)},
        },
    )
    assert inline_parts(fake_gemini.requests[0].json) == [("image/png", red), ("image/png", mask)]
    (out,) = b64_images(resp)
    assert pixel_at(out, 100, 512)[:3] == (255, 0, 0)
    assert pixel_at(out, 900, 512)[:3] == fake_gemini_colour(fake_gemini.requests[0].json)


def test_json_edit_bad_base64_data_uri(client: OpenAI, fake_gemini: FakeGemini) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(client, {"model": MODEL, "prompt": "x", "images": [{"image_url": "data:image/png;base64,@@@!"}]})
    assert error_of(info.value)["param"] == "images"
    assert fake_gemini.requests == []


# --- 10: SSRF guard over HTTP ---------------------------------------------------------------------


@pytest.fixture
def guarded_client(gateway_factory: Any, fake_gemini: FakeGemini) -> OpenAI:
    return gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False).client()


def _ssrf_error(client: OpenAI, url: str) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(client, {"model": MODEL, "prompt": "x", "images": [{"image_url": url}]})
    return error_of(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_hosts_are_not_fetched(
    guarded_client: OpenAI, fake_gemini: FakeGemini, image_server: tuple[str, list[str]], host: str
) -> None:
    root, hits = image_server
    port = root.rsplit(":", 1)[1]
    error = _ssrf_error(guarded_client, f"http://{host}:{port}/a.png")
    assert error["code"] == "url_not_allowed"
    assert error["param"] == "images"
    assert hits == []  # the guard refused before connecting
    assert fake_gemini.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1:70/x"])
def test_non_http_schemes_are_refused(guarded_client: OpenAI, fake_gemini: FakeGemini, url: str) -> None:
    error = _ssrf_error(guarded_client, url)
    assert error["param"] == "images"
    assert fake_gemini.requests == []


def test_multipart_url_field_is_guarded_too(
    gateway_factory: Any, fake_gemini: FakeGemini, image_server: tuple[str, list[str]]
) -> None:
    """`image` sent as a plain form field holding a URL goes through the same guard."""
    gw = gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False)
    root, hits = image_server
    boundary = "url-boundary"
    body = multipart_body(boundary, [("prompt", "x"), ("image", f"{root}/a.png")])
    resp = raw_post(gw, content=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "url_not_allowed"
    assert hits == []


def test_fetch_errors_name_the_json_field(guarded_client: OpenAI, image_server: tuple[str, list[str]]) -> None:
    """Errors about a JSON `images` entry name "images" (the field the client sent), also when
    they come from fetching the URL, not from parsing the body."""
    root, _ = image_server
    assert _ssrf_error(guarded_client, f"{root}/a.png")["param"] == "images"


# --- 11: edits through an OpenAI-compatible upstream ---------------------------------------------


def openai_gateway_edit(gw: RunningGateway, image: Any, **kwargs: Any) -> ImagesResponse:
    """sdk_edit on a fresh, closed-after client. On a 500 the gateway's server thread is joined
    before the error reaches pytest: uvicorn logs the traceback from its own thread, and on
    CPython 3.11 two threads formatting tracebacks at once (ast.parse for the carets) can fail
    with "SystemError: AST constructor recursion depth mismatch"."""
    with gw.client() as client:
        try:
            return sdk_edit(client, image, **kwargs)
        except openai.InternalServerError:
            gw.server.stop()
            raise


def test_edit_through_openai_provider(gateway_factory: Any, fake_openai: FakeOpenAI, fake_gemini: FakeGemini) -> None:
    gw: RunningGateway = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    first, second = solid_png(64, 64, (255, 0, 0)), solid_jpeg(64, 64, (0, 255, 0))
    mask = half_mask(64, 64)
    resp = openai_gateway_edit(
        gw,
        [png_file(first, "a.png"), ("b.jpg", second, "image/jpeg")],
        prompt="openai edit",
        mask=png_file(mask, "mask.png"),
    )
    assert fake_gemini.requests == []
    assert len(fake_openai.requests) == 1
    recorded = fake_openai.requests[0]
    assert recorded.path == "/v1/images/edits"
    assert recorded.files is not None and recorded.form is not None
    assert [(f.field_name, f.data) for f in recorded.files] == [("image[]", first), ("image[]", second), ("mask", mask)]
    assert [f.content_type for f in recorded.files] == ["image/png", "image/jpeg", "image/png"]
    assert recorded.form["size"] == "1024x1024"
    assert recorded.form["response_format"] == "b64_json"
    assert recorded.form["model"] == MODEL
    assert recorded.form["prompt"] == "openai edit"
    # The mask is the upstream's job here: the gateway does not composite.
    (out,) = b64_images(resp)
    assert image_size(out) == (1024, 1024)
    assert pixel_at(out, 100, 512)[:3] == color_for("openai edit")
    assert resp.model_extra is not None and resp.model_extra["effective"]["provider"] == "openai"


def test_openai_provider_size_follows_input_shape(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    gw: RunningGateway = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    resp = openai_gateway_edit(gw, png_file(solid_png(600, 800)))
    assert fake_openai.requests[0].form is not None
    assert fake_openai.requests[0].form["size"] == "887x1182"
    assert image_size(b64_images(resp)[0]) == (887, 1182)


# --- 12: n ----------------------------------------------------------------------------------------


def test_n_2_edit_makes_two_gemini_calls(client: OpenAI, fake_gemini: FakeGemini) -> None:
    source = solid_png(32, 32, (1, 1, 1))
    resp = sdk_edit(client, png_file(source), n=2)
    assert len(b64_images(resp)) == 2
    assert len(fake_gemini.requests) == 2
    for recorded in fake_gemini.requests:
        assert inline_parts(recorded.json) == [("image/png", source)]
