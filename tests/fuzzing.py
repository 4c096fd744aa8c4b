"""Seeded fuzz cases for the gateway, shared by tests/server/test_fuzz.py and bench/fuzz.py.

A case is one HTTP request (method, path, headers, raw body bytes) and, for upstream cases, a
hostile answer the fake upstream serves first. Client cases mutate field names, types, values,
encodings (NaN, lone surrogates, invalid UTF-8, charsets), nesting, sizes, multipart boundaries
and headers around a valid request; upstream cases send a valid request to an upstream that
answers with garbage. The same seed gives the same cases. `run_cases` sends them through real
gateways on loopback (one per provider, each with its fake) and checks every answer: never a
500, OpenAI's error shape on every 4xx, and 5xx only (502/503/504) for upstream faults.
"""

from __future__ import annotations

import base64
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .fakes.common import MalformedJSON, RawResponse
from .fakes.fal import FakeFal, OnResult, OnStatus
from .fakes.gemini import FakeGemini, GeminiError
from .fakes.hostile import deeply_nested_json, gemini_image, google_retry_delay
from .fakes.images import solid_jpeg, solid_png
from .fakes.openai_upstream import FakeOpenAI
from .fakes.replicate import FakeReplicate
from .fakes.server import LoopbackServer

MODEL = "gemini-3-pro-image-preview"
API_KEY = "sk-fuzz"
PROVIDERS = ("gemini", "replicate", "fal", "openai")
PNG = solid_png(16, 12, (30, 60, 90))
MASK = solid_png(16, 12, (0, 0, 0, 0))
JPEG = solid_jpeg(12, 12, (200, 100, 0))
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode("ascii")

KNOWN = [
    "prompt",
    "n",
    "size",
    "aspect_ratio",
    "resolution",
    "seed",
    "response_format",
    "output_format",
    "output_compression",
    "enable_web_search",
    "safety_tolerance",
    "safety_filter_level",
    "limit_generations",
    "sync_mode",
    "allow_fallback_model",
    "user",
    "model",
]
# What adapters build: pass-through must not replace these, in any spelling.
BUILT = [
    "contents",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "tools",
    "input",
    "image_input",
    "image_urls",
    "num_images",
    "prompt",
    "image[]",
    "image",
    "images",
    "mask",
    "response_modalities",
    "imageConfig",
]
WORDS = [
    "temperature",
    "foo",
    "x",
    "system_prompt",
    "max_images",
    "cfg",
    "a_b",
    "camelCase",
    "__proto__",
    "constructor",
    "toString",
    "",
    " ",
    "a.b",
    "a[b]",
    "a[]",
    "[",
    "]",
    "_charset_",
    "%00",
    "\u00e9t\u00e9",
]
STRINGS = [
    "",
    " ",
    "a red fox",
    "auto",
    "1K",
    "2K",
    "4K",
    "3k",
    "0.25",
    "1MP",
    "1e200K",
    "1e999",
    "NaNK",
    "infK",
    "-1K",
    "0K",
    "9" * 400 + "K",
    "16:9",
    "0:0",
    "1:0",
    "-1:2",
    "1e300:1",
    "21:9",
    "1024x1024",
    "1e200x1e200",
    "0x0",
    "1x" + "9" * 320,
    "  4096 x 4096 ",
    "\uff11\uff10\uff12\uff14x\uff11\uff10\uff12\uff14",
    "url",
    "b64_json",
    "png",
    "jpeg",
    "jpg",
    "webp",
    "avif",
    "gif",
    "bmp",
    "true",
    "false",
    "yes",
    "1",
    "\x00",
    "\x1b[31m",
    "\u202e",
    "\ud800",
    "a\udfffb",
    "\U0001f600",
    "caf\u00e9",
    "line\r\nX-Injected: 1",
    "%s%n",
    "${jndi:x}",
    "'; DROP TABLE usage;--",
    "../../etc/passwd",
    PNG_URI,
    "data:image/png;base64,!!!!",
    "http://127.0.0.1:1/x.png",
    "file:///etc/passwd",
    "http://[::1]/",
    "block_only_high",
    "BLOCK_NONE",
    "6",
    "9",
]
NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2,
    10,
    11,
    2**31,
    2**63,
    10**400,
    0.5,
    -0.0,
    1e-320,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
]


@dataclass
class Case:
    index: int
    kind: str  # "client" (bad input: never a 5xx) or "upstream" (hostile upstream: 502-504 allowed)
    provider: str  # which gateway (and fake) serves it
    path: str
    headers: dict[str, str]
    body: bytes
    what: str  # a short description for the report
    hostile: Any = None  # behaviour the fake serves first (upstream cases)


@dataclass
class Outcome:
    case: Case
    status: int
    problem: str | None = None  # why the answer breaks a rule, None when it is fine
    text: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def by_status(self, kind: str | None = None) -> Counter[int]:
        return Counter(o.status for o in self.outcomes if kind is None or o.case.kind == kind)

    @property
    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem is not None]

    @property
    def server_errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status >= 500]


# --- values --------------------------------------------------------------------------------


class Deep:
    """A placeholder for a value nested `depth` levels deep (built as text: json.dumps recurses)."""

    def __init__(self, depth: int, kind: str) -> None:
        self.depth, self.kind = depth, kind

    def text(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * self.depth + "1" + "}" * self.depth


def rand_string(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(STRINGS)
    if roll < 0.7:
        return "a" * rng.choice([1000, 70_000, 300_000])
    if roll < 0.85:
        return "".join(
            chr(
                rng.choice(
                    [
                        rng.randrange(32, 127),
                        rng.randrange(0x80, 0x3000),
                        rng.randrange(0xD800, 0xE000),
                        rng.randrange(0x10000, 0x10FFFF),
                    ]
                )
            )
            for _ in range(rng.randrange(1, 12))
        )
    return rng.choice(WORDS)


def rand_value(rng: random.Random, depth: int = 0, *, deep: bool = True) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return rand_string(rng)
    if roll < 0.6:
        return rng.choice(NUMBERS)
    if roll < 0.7 and depth < 3:
        return [rand_value(rng, depth + 1, deep=deep) for _ in range(rng.randrange(0, 4))]
    if roll < 0.85 and depth < 3:
        return {rand_name(rng): rand_value(rng, depth + 1, deep=deep) for _ in range(rng.randrange(0, 4))}
    if roll < 0.9:
        if not deep:
            return [[[{"deep": [1]}]]]
        return Deep(rng.choice([20, 40, 500, 5000, 200_000]), rng.choice(["list", "dict"]))
    return rng.choice([None, True, {}, [], ""])


def rand_name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(KNOWN)
    if roll < 0.65:
        return rng.choice(BUILT)
    if roll < 0.9:
        return rng.choice(WORDS)
    return rand_string(rng)[:40]


def to_json(value: Any) -> str:
    """JSON text, with NaN/Infinity and lone surrogates as Python's json writes them, and `Deep`
    placeholders spliced in as text."""
    deep: list[Deep] = []

    def mark(item: Any) -> Any:
        if isinstance(item, Deep):
            deep.append(item)
            return f"\x00DEEP{len(deep) - 1}\x00"
        if isinstance(item, dict):
            return {k: mark(v) for k, v in item.items()}
        if isinstance(item, list):
            return [mark(v) for v in item]
        return item

    text = json.dumps(mark(value))
    for i, item in enumerate(deep):
        text = text.replace(json.dumps(f"\x00DEEP{i}\x00"), item.text())
    return text


def mutate_bytes(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.25 and body:
        cut = rng.randrange(len(body))
        return body[:cut], f"truncated at {cut}"
    if roll < 0.5 and body:
        at = rng.randrange(len(body))
        return body[:at] + bytes([rng.choice([0xFF, 0xC0, 0xED, 0x80, 0x00])]) + body[at + 1 :], f"byte {at} flipped"
    if roll < 0.65:
        return b"\xef\xbb\xbf" + body, "BOM"
    if roll < 0.8:
        return body.decode("latin-1").encode("utf-16"), "as UTF-16"
    return body + rng.choice([b"}", b"garbage", b"\x00" * 10, b",{}"]), "trailing bytes"


def valid_params(rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {"model": MODEL, "prompt": "a lighthouse at dawn"}
    for name in rng.sample(["size", "aspect_ratio", "resolution", "n", "seed", "output_format"], rng.randrange(0, 3)):
        params[name] = {
            "size": "1024x1024",
            "aspect_ratio": "16:9",
            "resolution": "1K",
            "n": 1,
            "seed": 7,
            "output_format": "png",
        }[name]
    params["response_format"] = "b64_json"
    return params


def fuzz_params(rng: random.Random) -> tuple[dict[str, Any], str]:
    params = valid_params(rng)
    changes = []
    for _ in range(rng.randrange(1, 5)):
        roll = rng.random()
        if roll < 0.5:
            name = rand_name(rng)
            params[name] = rand_value(rng)
            changes.append(f"{name!r}={type(params[name]).__name__}")
        elif roll < 0.7 and len(params) > 1:
            name = rng.choice(sorted(params))
            del params[name]
            changes.append(f"-{name!r}")
        else:
            name = rng.choice(KNOWN)
            params[name] = rand_value(rng)
            changes.append(f"{name!r}~{type(params[name]).__name__}")
    if params.get("n") not in (None, 1) and rng.random() < 0.8:
        params["n"] = 1  # keep most cases to one upstream call
    return params, ", ".join(changes)


# --- requests ------------------------------------------------------------------------------


def json_case(rng: random.Random, index: int, provider: str, path: str) -> Case:
    params, what = fuzz_params(rng)
    if path.endswith("edits"):
        refs = rng.choice(
            [
                [PNG_URI],
                [{"image_url": PNG_URI}],
                [{"image_url": {"url": PNG_URI}}],
                [rand_value(rng)],
                rand_value(rng),
                [PNG_URI] * rng.choice([2, 15]),
                [{"file_id": "f"}],
                ["http://127.0.0.1:1/a.png"],
                [],
            ]
        )
        params[rng.choice(["images", "image", "images"])] = refs
        if rng.random() < 0.2:
            params["mask"] = rng.choice([{"image_url": PNG_URI}, rand_value(rng), PNG_URI])
    body = to_json(params).encode("utf-8", "surrogatepass")
    headers = {"content-type": "application/json"}
    if rng.random() < 0.15:
        body, how = mutate_bytes(rng, body)
        what += f"; body {how}"
    if rng.random() < 0.1:
        headers["content-type"] = rng.choice(
            [
                "text/plain",
                "application/json; charset=utf-16",
                "",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
                "application/json;;;",
                "APPLICATION/JSON",
            ]
        )
        what += f"; content-type {headers['content-type']!r}"
    return Case(index, "client", provider, path, headers, body, f"JSON {path.rsplit('/', 1)[-1]}: {what}")


def _part(name: bytes, data: bytes, *, filename: bytes | None = None, content_type: bytes | None = None) -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    headers = disposition + (b"\r\nContent-Type: " + content_type if content_type else b"")
    return headers + b"\r\n\r\n" + data


def form_bytes(value: Any) -> bytes:
    text = value if isinstance(value, str) else to_json(value)
    return text.encode("utf-8", "surrogatepass")


def multipart_case(rng: random.Random, index: int, provider: str) -> Case:
    params, what = fuzz_params(rng)
    parts: list[bytes] = []
    for name, value in params.items():
        if rng.random() < 0.1:
            value = rng.choice([b"caf\xe9", b"\xff\xfe", b"\xed\xa0\x80", b"+2AA-"])
            parts.append(_part(name.encode("utf-8", "surrogatepass"), value))
            what += f"; {name!r} raw bytes"
            continue
        content_type = rng.choice(
            [None] * 8
            + [
                b"text/plain; charset=utf-16",
                b"text/plain; charset=latin-1",
                b"text/plain; charset=utf-8",
                b"application/json",
            ]
        )
        parts.append(_part(name.encode("utf-8", "surrogatepass"), form_bytes(value), content_type=content_type))
    for _ in range(rng.choice([0, 0, 1, 2])):
        depth = rng.choice([2, 30, 40, 1000])
        name = "a" + "[b]" * depth if rng.random() < 0.7 else rng.choice(["a[]", "a[b][]", "a[][b]", "[x]", "a[b"])
        parts.append(_part(name.encode(), b"1"))
        what += f"; field {name[:20]!r}..({len(name)})"
    if rng.random() < 0.1:
        parts.append(_part(b"_charset_", rng.choice([b"utf-8", b"latin-1", b"utf-16", b"\xff"])))
        what += "; _charset_"
    images = rng.choice([[PNG], [PNG, JPEG], [b""], [b"not an image"], [PNG[:40]], [], [PNG] * 15])
    for image in images:
        field_name = rng.choice([b"image[]", b"image", b"image[]", b"images", b"img"])
        parts.append(
            _part(
                field_name,
                image,
                filename=rng.choice([b"a.png", b"", b"..\\x.png", b"\xff.png"]),
                content_type=rng.choice([b"image/png", b"application/octet-stream", b"text/plain"]),
            )
        )
    if rng.random() < 0.2:
        parts.append(_part(b"mask", rng.choice([MASK, PNG, b"x"]), filename=b"m.png", content_type=b"image/png"))
    rng.shuffle(parts)
    boundary = rng.choice([b"fuzzb0undary", b"x" * 70, b"a'()+_,-./:=? b", b"--"])
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    roll = rng.random()
    if roll < 0.08:
        content_type = "multipart/form-data"
        what += "; no boundary"
    elif roll < 0.16:
        content_type += "; charset=" + rng.choice(["utf-7", "unicode_escape", "latin-1", "utf-16", "UTF-8", "bogus"])
        what += "; " + content_type.rsplit(";", 1)[-1].strip()
    elif roll < 0.26:
        body, how = mutate_bytes(rng, body)
        what += f"; body {how}"
    return Case(
        index, "client", provider, "/v1/images/edits", {"content-type": content_type}, body, f"multipart edit: {what}"
    )


def header_mutation(rng: random.Random, case: Case) -> None:
    roll = rng.random()
    if roll < 0.05:
        case.headers["authorization"] = rng.choice(
            ["", "Bearer", "Basic x", "Bearer \u00e9".encode().decode("latin-1")]
        )
        case.what += "; bad authorization"
    elif roll < 0.12:
        case.headers["idempotency-key"] = rng.choice(["k", "x" * 5000, "\u00e9".encode().decode("latin-1"), "a b"])
        case.what += "; idempotency-key"
    elif roll < 0.18:
        case.headers["x-request-id"] = rng.choice(["", "x" * 10_000, "a\tb", "\u00ff"])
        case.what += "; x-request-id"
    elif roll < 0.22:
        case.headers["content-encoding"] = rng.choice(["gzip", "br", "identity"])
        case.what += "; content-encoding lie"


# --- hostile upstreams ---------------------------------------------------------------------


def _garbage(rng: random.Random) -> Any:
    value = rand_value(rng, deep=False)  # plain data: some builders use json.dumps
    return rng.choice([value, [value], {"x": value}, 5, "s", None, []])


def answer(status: int, body: Any) -> RawResponse:
    return RawResponse(status, to_json(body), "application/json")


def hostile_answer(rng: random.Random, provider: str) -> tuple[Any, str]:
    status = rng.choice([200, 200, 201, 400, 401, 404, 409, 422, 429, 500, 502, 503, 504])
    common: list[tuple[Any, str]] = [
        (deeply_nested_json(status), f"{status} deeply nested JSON"),
        (RawResponse(status, b"<html>bad gateway</html>"), f"{status} HTML"),
        (RawResponse(status, b"\xff\xfe\x00garbage", "application/json"), f"{status} invalid UTF-8"),
        (MalformedJSON(), "truncated JSON"),
        (answer(status, _garbage(rng)), f"{status} JSON of odd type"),
        (answer(status, {"error": _garbage(rng), "detail": _garbage(rng)}), f"{status} odd error fields"),
        (answer(status, 1e308 * 10), f"{status} Infinity"),
        (
            RawResponse(429, b"{}", "application/json", {"retry-after": rng.choice(["1e999", "nan", "-1", "x"])}),
            "429 odd Retry-After header",
        ),
    ]
    specific: dict[str, list[tuple[Any, str]]] = {
        "gemini": [
            (google_retry_delay(rng.choice(["1e999s", "nans", "infs", "-1s", "1e300s", "s", "5"])), "retryDelay"),
            (
                gemini_image(
                    usage={
                        "promptTokenCount": rng.choice([10**400, "9" * 5000, -1, 1e308 * 10, [1]]),
                        "candidatesTokenCount": _garbage(rng),
                    }
                ),
                "odd token counts",
            ),
            (gemini_image(finishReason=_garbage(rng), content=_garbage(rng)), "odd candidate fields"),
            (answer(200, {"candidates": [{"content": {"parts": [_garbage(rng)]}}]}), "odd part"),
            (answer(200, {"candidates": [], "promptFeedback": _garbage(rng)}), "odd promptFeedback"),
            (answer(429, {"error": {"code": 429, "details": _garbage(rng)}}), "odd details"),
            (GeminiError(503, "UNAVAILABLE", "overloaded", 1e300), "huge retry hint"),
        ],
        "replicate": [
            (answer(201, {"id": "p", "status": "succeeded", "output": _garbage(rng)}), "odd output"),
            (answer(201, {"id": "p", "status": "failed", "error": _garbage(rng)}), "odd error"),
            (answer(201, {"id": _garbage(rng), "status": "processing", "urls": _garbage(rng)}), "odd urls"),
            (answer(201, {"status": _garbage(rng)}), "odd status"),
        ],
        "fal": [
            (OnResult(answer(200, {"images": _garbage(rng), "description": _garbage(rng)})), "odd result"),
            (OnResult(deeply_nested_json(200)), "deeply nested result"),
            (OnStatus(answer(200, {"status": _garbage(rng), "error": _garbage(rng)})), "odd status"),
            (answer(200, {"request_id": _garbage(rng), "status_url": _garbage(rng)}), "odd submit"),
            (
                answer(422, {"detail": [{"loc": _garbage(rng), "msg": _garbage(rng), "type": _garbage(rng)}]}),
                "odd detail",
            ),
        ],
        "openai": [
            (
                answer(
                    200,
                    {"data": [{"b64_json": _garbage(rng), "url": _garbage(rng)}], "usage": {"input_tokens": 10**400}},
                ),
                "odd data",
            ),
            (
                answer(400, {"error": {"code": _garbage(rng), "message": _garbage(rng), "param": _garbage(rng)}}),
                "odd error",
            ),
            (answer(200, {"data": _garbage(rng), "usage": _garbage(rng)}), "odd envelope"),
        ],
    }
    return rng.choice(common + specific[provider] * 2)


def make_cases(seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    for index in range(count):
        provider = PROVIDERS[index % len(PROVIDERS)]
        roll = rng.random()
        if roll < 0.2:
            hostile, what = hostile_answer(rng, provider)
            body = json.dumps({"model": MODEL, "prompt": "p", "response_format": "b64_json"}).encode()
            cases.append(
                Case(
                    index,
                    "upstream",
                    provider,
                    "/v1/images/generations",
                    {"content-type": "application/json"},
                    body,
                    f"{provider} upstream: {what}",
                    hostile,
                )
            )
            continue
        if roll < 0.55:
            case = json_case(rng, index, provider, "/v1/images/generations")
        elif roll < 0.7:
            case = json_case(rng, index, provider, "/v1/images/edits")
        else:
            case = multipart_case(rng, index, provider)
        header_mutation(rng, case)
        cases.append(case)
    return cases


# --- running -------------------------------------------------------------------------------


FAKES = {"gemini": FakeGemini, "replicate": FakeReplicate, "fal": FakeFal, "openai": FakeOpenAI}


@contextmanager
def gateways() -> Iterator[dict[str, tuple[str, Any]]]:
    """One real gateway per provider on loopback, each with its fake upstream: {provider: (url, fake)}."""
    from imagegate.config import Settings
    from imagegate.server import create_app

    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imagegate-fuzz-")))
        running: dict[str, tuple[str, Any]] = {}
        for provider in PROVIDERS:
            fake = stack.enter_context(FAKES[provider]())
            settings = Settings(
                data_dir=root / provider,
                api_keys=API_KEY,
                retry_attempts=2,
                retry_backoff_seconds=0.01,
                poll_interval_seconds=0.005,
                request_timeout_seconds=20,
                **{f"{provider}_api_key": fake.api_key, f"{provider}_base_url": fake.base_url},
            )
            server = stack.enter_context(LoopbackServer(create_app(settings), lifespan="on"))
            running[provider] = (server.url, fake)
        yield running


def check(case: Case, response: httpx.Response) -> str | None:
    """Why this answer breaks the rules, or None."""
    status = response.status_code
    if status == 500:
        return "500"
    if status >= 500 and case.kind == "client":
        return f"{status} for client input"
    if status > 504:
        return f"unexpected {status}"
    if 400 <= status < 500 or status >= 500:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return "error without OpenAI's shape"
        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
            return "error without OpenAI's shape"
        if not isinstance(error["message"], str) or not error["message"]:
            return "error without a message"
        if error["param"] is not None and not isinstance(error["param"], str):
            return "param is not a string"
    return None


def run_cases(cases: list[Case], *, progress: Any = None) -> Report:
    report = Report()
    start = time.monotonic()
    with gateways() as running, httpx.Client(timeout=60) as client:
        for number, case in enumerate(cases):
            url, fake = running[case.provider]
            fake.reset()
            if case.hostile is not None:
                fake.enqueue(case.hostile, case.hostile)  # both attempts
            headers = {
                k: v.encode("latin-1") for k, v in {"authorization": f"Bearer {API_KEY}", **case.headers}.items()
            }
            try:
                response = client.post(url + case.path, content=case.body, headers=headers)
            except httpx.HTTPError as exc:  # a dropped connection is no answer at all
                report.outcomes.append(Outcome(case, 0, f"no answer: {type(exc).__name__}"))
                continue
            report.outcomes.append(Outcome(case, response.status_code, check(case, response), response.text[:300]))
            if progress is not None:
                progress(number + 1, len(cases))
    report.seconds = time.monotonic() - start
    return report
