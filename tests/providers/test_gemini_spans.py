"""The Gemini answer's base64 is lifted out of the body, not parsed (providers/gemini.py).

`parse_body` must give exactly what a whole-body `json.loads` gives, for every shape, with the
image's base64 as a view of the body where it can; and every byte of that base64 is checked, so
none of it can reach a client's answer as broken JSON.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import httpx
import pytest

from imagegate.errors import UpstreamError
from imagegate.imaging import ImageBytes
from imagegate.providers import GeminiProvider
from imagegate.providers.gemini import SPAN_MIN_CHARS, lift_spans, parse_body, parse_response
from tests.fakes.gemini import FakeGemini, RawResponse
from tests.fakes.images import solid_png

from .test_gemini import make_request, raised

PNG = solid_png(64, 48, (10, 200, 30))
PNG_B64 = base64.b64encode(PNG + b"\0" * 3000).decode()  # long enough to be lifted
assert len(PNG_B64) > SPAN_MIN_CHARS


def answer(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": list(parts)}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1290},
        **extra,
    }


def image(data: str = PNG_B64, key: str = "inlineData", **extra: Any) -> dict[str, Any]:
    return {key: {"mimeType": "image/png", "data": data}, **extra}


def plain(value: Any) -> Any:
    """`value` with every memoryview as the str json.loads would have made."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, memoryview):
        return str(value, "ascii")
    return value


def views(value: Any) -> list[memoryview]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in views(item)]
    if isinstance(value, list):
        return [v for item in value for v in views(item)]
    return [value] if isinstance(value, memoryview) else []


def test_the_image_is_a_view_of_the_body_and_the_rest_is_parsed() -> None:
    body = json.dumps(answer({"text": "a fox"}, image())).encode()
    data = parse_body("gemini", body)
    [view] = views(data)
    assert view.obj is body  # not a copy
    assert plain(data) == json.loads(body)
    result = parse_response(data, keep_all_images=False)
    assert result.images[0].blob.read() == PNG + b"\0" * 3000
    assert bytes(result.images[0].blob.b64_bytes()) == PNG_B64.encode()
    assert (result.text, result.input_tokens, result.output_tokens) == ("a fox", 3, 1290)


def test_the_cut_body_is_small() -> None:
    body = json.dumps(answer(image(), image())).encode()
    reduced, spans = lift_spans(body)
    assert len(spans) == 2 and len(reduced) < 600 and len(body) > 2 * len(PNG_B64)


SHAPES = {
    "thought images first": answer(image(thought=True), {"text": "thinking", "thought": True}, image()),
    "several images": answer(image(), {"text": "two"}, image(PNG_B64[:-8] + "AAAAAAAA")),
    "snake case": answer(image(key="inline_data")),
    # An escaped slash is the same base64 to JSON, but not a plain span: the whole body is parsed.
    "escaped base64": answer(image(PNG_B64.replace("/", "\\/"))),
    # "data": "..." inside text (escaped quotes) and a "data" key outside any inlineData.
    "data in text": answer({"text": f'he said "data": "{PNG_B64}"'}, image()),
    "data key elsewhere": answer(image(), data=PNG_B64, extra={"data": PNG_B64}),
    "non-ascii text": answer({"text": "Füchse im Schnee 🦊"}, image()),
    "second candidate": {"candidates": [answer(image())["candidates"][0], answer(image())["candidates"][0]]},
    "whitespace around the colon": answer(image()),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("indent", [None, 2])
def test_every_shape_parses_as_json_loads_would(shape: dict[str, Any], indent: int | None) -> None:
    separators = (" , ", " :  ") if indent else None
    body = json.dumps(shape, indent=indent, separators=separators, ensure_ascii=bool(indent)).encode()
    assert plain(parse_body("gemini", body)) == json.loads(body)


def test_a_duplicate_data_key_gives_json_loads_answer() -> None:
    """The last of two keys wins, as in json.loads (two spans, one unaccounted: parsed whole)."""
    other = PNG_B64[:-8] + "AAAAAAAA"
    body = (
        '{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png",'
        f'"data":"{PNG_B64}","data":"{other}"}}}}]}}}}]}}'
    ).encode()
    assert plain(parse_body("gemini", body)) == json.loads(body)


def test_random_shapes_match_json_loads() -> None:
    rng = random.Random(9)
    pieces = [
        image(),
        image(thought=True),
        {"text": '"data": "x\\"'},
        {"text": PNG_B64},
        image(key="inline_data"),
        {"data": PNG_B64},
        image(PNG_B64.replace("A", "\\u0041", 1)),
    ]
    for _ in range(200):
        shape = answer(*rng.choices(pieces, k=rng.randint(1, 4)))
        body = json.dumps(shape, ensure_ascii=rng.random() < 0.5).encode()
        assert plain(parse_body("gemini", body)) == json.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"candidates": [',
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
        b'{"x": "data": "' + PNG_B64.encode() + b'"}',
        b'{"data": "' + PNG_B64.encode(),
    ],
)
def test_garbage_is_a_bad_response(body: bytes) -> None:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        with pytest.raises(UpstreamError) as info:
            parse_body("gemini", body)
        assert info.value.code == "upstream_bad_response"
    else:
        assert parse_body("gemini", body) == json.loads(body)


@pytest.mark.parametrize("bad", ["\\n", "\\u0000", "!", "é", "=AAA"])
def test_base64_broken_past_its_head_is_a_bad_response(bad: str) -> None:
    """The head decodes and sniffs as a PNG; a character far past it is not base64. Before, only the
    head was checked and the rest went out as b64_json (a raw control character: broken JSON)."""
    data = PNG_B64[:-12] + bad + PNG_B64[-12 + len(bad.encode().decode("unicode_escape")) :]
    body = json.dumps(answer(image(data)), ensure_ascii=False).encode()
    with pytest.raises(UpstreamError) as info:
        parse_response(parse_body("gemini", body), keep_all_images=False)
    assert info.value.code == "upstream_bad_response"


async def test_a_broken_tail_fails_before_any_answer(fake_gemini: FakeGemini, http: httpx.AsyncClient) -> None:
    """Through the adapter and the fake upstream's real HTTP: a tab in the base64's tail."""
    provider = GeminiProvider(api_key=fake_gemini.api_key, base_url=fake_gemini.base_url, client=http)
    body = json.dumps(answer(image(PNG_B64[:-4] + "A\tA="))).encode()
    fake_gemini.enqueue(RawResponse(200, body.decode(), content_type="application/json"))
    err = await raised(provider, make_request())
    assert isinstance(err, UpstreamError) and err.code == "upstream_bad_response"


def test_chunked_decoding_refuses_padding_before_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagegate import imaging

    monkeypatch.setattr(imaging, "B64_CHUNK_CHARS", 8)
    good = base64.b64encode(b"0123456789abcdef").decode()
    assert b"".join(ImageBytes(b64=good).chunks()) == b"0123456789abcdef"
    with pytest.raises(ValueError):
        ImageBytes(b64="AAA=AAAA" + good).validate()  # each 8-char chunk alone would decode
    assert ImageBytes(b64=good).size() == 16 and ImageBytes(b64="QQ==").size() == 1
