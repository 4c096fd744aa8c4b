"""Streaming through the gateway at 4K: time to the first partial image and to the final image, and
the gateway's memory per in-flight streamed request.

The upstream is bench/gemini_stream.py's (its own process): Gemini's `streamGenerateContent` event
stream at 4K sizes, 2 thought images then the answer, each ~8.4 MB of base64 on one `data:` line,
`--delay` seconds apart (a thinking model spaces them); `generateContent` answers the same images
in one body. The real gateway (`imagegate serve`, its own process) is pointed at it, and this
process is the client, over plain HTTP:

  latency   POST /v1/images/generations with stream: true, partial_images: 2, b64_json: seconds to
            the end of the first partial_image event and of the completed event, one request at a
            time; against the same request without stream (its answer comes when the upstream's
            whole body has)
  memory    the gateway's resident memory, sampled every 5 ms while `--concurrency` streamed
            requests run at once, less its resident memory before them, divided by them: what one
            in-flight streamed 4K request holds at its peak

    .venv/bin/python bench/stream_gateway.py                      # ~40 s on 2 cores
    .venv/bin/python bench/stream_gateway.py --rounds 5 --concurrency 8 --delay 1.0

Everything it writes (the gateway's data dir) is in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gateway_overhead import Child, free_port, gateway_command, wait_healthy  # noqa: E402
from gemini_stream import API_KEY as UPSTREAM_KEY  # noqa: E402
from gemini_stream import Upstream  # noqa: E402

SRC = HERE.parent / "src"
KEY = "bench-key"
MODEL = "gemini-3-pro-image-preview"


def start_gateway(upstream_port: int, tmp: Path) -> tuple[Child, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGATE_", "GEMINI_", "OPENAI_"))},
        "PYTHONPATH": str(SRC),
        "GEMINI_API_KEY": UPSTREAM_KEY,
        "GEMINI_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "IMAGEGATE_API_KEYS": KEY,
        "IMAGEGATE_DATA_DIR": str(tmp / "data"),
        "IMAGEGATE_PUBLIC_URL": url,
    }
    argv = [*gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    child = Child("gateway", argv, env, tmp / "gateway.log")
    wait_healthy(child, f"{url}/health", 60)
    return child, url


def body(stream: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": MODEL,
        "prompt": "a lighthouse",
        "resolution": "4K",
        "response_format": "b64_json",
    }
    if stream:
        fields.update(stream=True, partial_images=2)
    return fields


def streamed_request(url: str) -> tuple[float, float, int]:
    """(seconds to the first partial event, seconds to the completed event, partial events)."""
    started = time.monotonic()
    first: float | None = None
    partials = 0
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{url}/v1/images/generations", json=body(True), headers=headers, timeout=120) as r:
        r.raise_for_status()
        completed = False
        for line in r.iter_lines():
            if line == "event: image_generation.partial_image":
                partials += 1
            elif line == "event: image_generation.completed":
                completed = True
            elif line.startswith("data:") and completed:  # the final image, whole
                return (first if first is not None else float("nan")), time.monotonic() - started, partials
            elif line.startswith("data:") and partials == 1 and first is None:  # the first partial, whole
                first = time.monotonic() - started
    raise RuntimeError("the stream ended without a completed event")


def plain_request(url: str) -> float:
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/images/generations", json=body(False), headers={"authorization": f"Bearer {KEY}"}, timeout=120
    )
    response.raise_for_status()
    return time.monotonic() - started


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_per_request(url: str, pid: int, concurrency: int) -> tuple[float, float]:
    """(MB per in-flight request at the peak, baseline MB)."""
    baseline = rss_bytes(pid)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=streamed_request, args=(url,)) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    return (peak - baseline) / concurrency / 1e6, baseline / 1e6


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s [{min(values):.3f}, {max(values):.3f}]"


def main(args: argparse.Namespace) -> None:
    upstream = Upstream(args.delay)
    try:
        with tempfile.TemporaryDirectory(prefix="imagegate-stream-bench-") as tmp:
            gateway, url = start_gateway(upstream.port, Path(tmp))
            try:
                streamed_request(url)  # warm-up: connections, imports, the first conversion
                plain_request(url)
                runs = [streamed_request(url) for _ in range(args.rounds)]
                plain = [plain_request(url) for _ in range(args.rounds)]
                assert all(partials == 2 for _, _, partials in runs), runs
                print(f"upstream: 2 thought images then the answer, 4K (~8.4 MB base64 each), {args.delay:g} s apart")
                print(f"streamed: first partial image after {spread([r[0] for r in runs])}")
                print(f"streamed: final image after         {spread([r[1] for r in runs])}")
                print(f"unstreamed: the answer after        {spread(plain)}")
                per_request, baseline = memory_per_request(url, gateway.proc.pid, args.concurrency)
                print(
                    f"memory: {per_request:.1f} MB per in-flight streamed 4K request at the peak "
                    f"({args.concurrency} at once, over a {baseline:.0f} MB gateway)"
                )
            finally:
                gateway.stop()
    finally:
        upstream.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds between the upstream's events")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    main(parser.parse_args())
