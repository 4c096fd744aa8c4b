"""Gemini's streamed call at 4K: time to the first partial and to the answer, CPU and memory per call.

An upstream in its own process (this file with `--serve PORT`, raw ASGI on uvicorn) answers
`:streamGenerateContent?alt=sse` with Gemini's event stream at 4K sizes: 2 thought images, then
the answer, each ~8.4 MB of base64 on one `data:` line (an 8x8 PNG head and 6.3 MB of noise: the
adapter checks a head and the base64, nothing more, so noise costs what a real 4K PNG does), then
the finish chunk; `--delay` seconds between events, as a thinking model spaces them. It also
answers `:generateContent` with the same three images in one body, the unstreamed call.

The bench process calls `GeminiProvider` directly (no gateway), over httpx, with a listener that
drops each partial at once, as the gateway does once it has sent it on:

  latency   wall seconds to the first partial and to the answer (one call at a time)
  cpu       this process's CPU seconds per call, streamed vs unstreamed, `--concurrency` calls
            at once and no delay: the SSE decoding and per-chunk parsing against one body
  memory    tracemalloc's peak for `--concurrency` streamed calls at once, divided by them: what
            one in-flight streamed 4K call holds at most (the upstream is another process, so
            only the adapter's own allocations are traced)

    .venv/bin/python bench/gemini_stream.py                 # ~30 s on 2 cores
    .venv/bin/python bench/gemini_stream.py --concurrency 8 --rounds 5 --delay 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from imagegate.catalog import load_builtin_catalog  # noqa: E402
from imagegate.normalize import resolve_layout  # noqa: E402
from imagegate.providers import GeminiProvider, ProviderImage, ProviderRequest  # noqa: E402

IMAGE_BYTES = 6_300_000  # ~8.4 MB of base64: a 4K answer's size
API_KEY = "bench-key"
PIECE = 65536  # the upstream writes its events in pieces of this size, as a socket would carry them


# --- the upstream (its own process) -----------------------------------------------------------


def _image(seed: int) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (seed, 0, 255)).save(out, "PNG")
    return base64.b64encode(out.getvalue() + os.urandom(IMAGE_BYTES)).decode("ascii")


def _chunk(parts: list[dict[str, Any]], **candidate: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0, **candidate}]}


def upstream_app(delay: float) -> Any:
    thoughts = [{"inlineData": {"mimeType": "image/png", "data": _image(i)}, "thought": True} for i in (1, 2)]
    final = {"inlineData": {"mimeType": "image/png", "data": _image(3)}, "thoughtSignature": "sig"}
    usage = {"promptTokenCount": 17, "candidatesTokenCount": 2000}
    chunks = [_chunk([part]) for part in [*thoughts, final]]
    chunks.append({**_chunk([{"text": ""}], finishReason="STOP"), "usageMetadata": usage})
    events = [b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks]
    whole = json.dumps({**_chunk([*thoughts, final], finishReason="STOP"), "usageMetadata": usage}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        streamed = ":streamGenerateContent" in scope["path"]
        content_type = b"text/event-stream" if streamed else b"application/json"
        if not streamed and delay:  # the model thinks as long either way: the one body comes when the last event would
            await asyncio.sleep(delay * (len(events) - 1))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for index, event in enumerate(events if streamed else [whole]):
            if index and delay:
                await asyncio.sleep(delay)
            for start in range(0, len(event), PIECE):
                await send({"type": "http.response.body", "body": event[start : start + PIECE], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def serve(port: int, delay: float) -> None:
    import uvicorn

    uvicorn.run(upstream_app(delay), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the bench --------------------------------------------------------------------------------


class Upstream:
    def __init__(self, delay: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, __file__, "--serve", str(self.port), "--delay", str(delay)]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the upstream did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def request(on_partial: Any) -> ProviderRequest:
    model = load_builtin_catalog().get("gemini-3-pro-image-preview")
    assert model is not None
    layout = resolve_layout(model, aspect_ratio="1:1", resolution="4K")
    return ProviderRequest(
        mode="t2i", prompt="a lighthouse", layout=layout, binding=model.providers["gemini"], on_partial=on_partial
    )


async def one_call(provider: GeminiProvider, streamed: bool) -> tuple[float, float]:
    """(seconds to the first partial, seconds to the answer) of one call."""
    started = time.monotonic()
    first: list[float] = []

    def on_partial(image: ProviderImage) -> None:
        if not first:
            first.append(time.monotonic() - started)

    result = await provider.run(request(on_partial if streamed else None))
    assert len(result.images) == 1
    return (first[0] if first else float("nan")), time.monotonic() - started


async def cpu_per_call(provider: GeminiProvider, streamed: bool, concurrency: int, rounds: int) -> float:
    started = time.process_time()
    for _ in range(rounds):
        await asyncio.gather(*(one_call(provider, streamed) for _ in range(concurrency)))
    return (time.process_time() - started) / (rounds * concurrency)


async def peak_per_call(provider: GeminiProvider, concurrency: int) -> float:
    tracemalloc.start()
    try:
        await asyncio.gather(*(one_call(provider, True) for _ in range(concurrency)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / concurrency


async def main(args: argparse.Namespace) -> None:
    paced, fast = Upstream(args.delay), Upstream(0.0)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            slow = GeminiProvider(api_key=API_KEY, base_url=f"http://127.0.0.1:{paced.port}", client=client)
            quick = GeminiProvider(api_key=API_KEY, base_url=f"http://127.0.0.1:{fast.port}", client=client)
            await one_call(quick, True)  # warm up: connections, imports
            latencies = [await one_call(slow, True) for _ in range(args.rounds)]
            first = statistics.median(lat[0] for lat in latencies)
            final = statistics.median(lat[1] for lat in latencies)
            print(f"latency (delay {args.delay:g} s between events): first partial {first:.3f} s, answer {final:.3f} s")
            cpu_stream = await cpu_per_call(quick, True, args.concurrency, args.rounds)
            cpu_plain = await cpu_per_call(quick, False, args.concurrency, args.rounds)
            print(
                f"cpu per call at {args.concurrency} concurrent: streamed {cpu_stream * 1000:.1f} ms, "
                f"unstreamed {cpu_plain * 1000:.1f} ms, ratio {cpu_stream / cpu_plain:.2f}"
            )
            peak = await peak_per_call(slow, args.concurrency)
            print(
                f"memory: traced peak per in-flight streamed 4K call {peak / 1e6:.1f} MB ({args.concurrency} at once)"
            )
    finally:
        paced.stop()
        fast.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments.serve, arguments.delay)
    else:
        asyncio.run(main(arguments))
