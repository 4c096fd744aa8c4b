"""A minimal fake Gemini `generateContent` upstream for benchmarks: answers instantly with one
precomputed response holding a realistic 1024x1024 ("1K") PNG.

Run as its own process so that it shares no event loop (and, under load, no GIL) with the
gateway or the load generator:

    python bench/fake_gemini.py --port 8123 --api-key KEY

Routes: POST /v1beta/models/{model}:generateContent (checks `x-goog-api-key`, reads and parses
the JSON body), GET /health. Standalone on purpose: no imports from tests/ or imagegate.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import re
from typing import Any

MODEL_PATH = re.compile(r"^/v1beta/models/[^/]+:generateContent$")
PNG_SIDE = 1024
NOISE_LEVELS = 8  # per-pixel noise amplitude; 8 gives a ~1.5 MB PNG, like a real 1K generation


def make_png(side: int = PNG_SIDE, seed: int = 1234) -> bytes:
    """A deterministic RGB PNG: gradients plus per-pixel noise, so it compresses like a photo
    (~1.5 MB at 1024x1024), not like a 3 KB solid colour."""
    from PIL import Image, ImageChops

    rng = random.Random(seed)
    grad_x = Image.linear_gradient("L").rotate(90).resize((side, side))
    grad_y = Image.linear_gradient("L").resize((side, side))
    diagonal = ImageChops.blend(grad_x, grad_y, 0.5)
    channels = []
    for base in (grad_x, grad_y, diagonal):
        noise = Image.frombytes("L", (side, side), rng.randbytes(side * side))
        channels.append(ImageChops.add(base, noise.point(lambda v: v * NOISE_LEVELS // 256)))
    buf = io.BytesIO()
    Image.merge("RGB", channels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def response_body(png: bytes) -> bytes:
    return json.dumps(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "ok"},
                            {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode("ascii")}},
                        ],
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
        },
        separators=(",", ":"),
    ).encode()


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json; charset=UTF-8"), (b"content-length", str(len(body)).encode())]


def make_app(api_key: str, body: bytes) -> Any:
    """A raw ASGI app (no framework), so the upstream itself costs as little as possible."""
    ok_headers = _json_headers(body)

    def error(status: int, google_status: str, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        payload = json.dumps({"error": {"code": status, "message": message, "status": google_status}}).encode()
        return status, _json_headers(payload), payload

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/health":
            status, headers, payload = 200, _json_headers(b"{}"), b"{}"
        elif method != "POST" or not MODEL_PATH.match(path):
            status, headers, payload = error(404, "NOT_FOUND", f"no route {method} {path}")
        elif dict(scope["headers"]).get(b"x-goog-api-key", b"").decode("latin-1") != api_key:
            status, headers, payload = error(400, "INVALID_ARGUMENT", "API key not valid.")
        else:
            try:
                request = json.loads(b"".join(chunks))
                valid = isinstance(request, dict) and isinstance(request.get("contents"), list)
            except ValueError:
                valid = False
            if valid:
                status, headers, payload = 200, ok_headers, body
            else:
                status, headers, payload = error(400, "INVALID_ARGUMENT", "Invalid JSON payload.")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--side", type=int, default=PNG_SIDE, help="pixel side of the PNG (4096: a 4K image)")
    parser.add_argument("--png", help="serve this PNG file instead of generating one")
    args = parser.parse_args()

    import uvicorn

    png = open(args.png, "rb").read() if args.png else make_png(args.side)
    body = response_body(png)
    uvicorn.run(
        make_app(args.api_key, body),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
    )


if __name__ == "__main__":
    main()
