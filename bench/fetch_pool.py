"""What a connection pool per image-URL fetch costs against a shared keep-alive pool.

`ImageFetcher` opens a fresh pool (so a fresh TCP connection) for every fetch and closes it at
the end, because a shared httpcore pool leaks connections when a fetch is cancelled twice. The
baseline is the same guarded fetch on one shared keep-alive client. A loopback server (uvicorn,
raw ASGI, in a thread) serves a PNG of `--kib` KiB; each round fetches it `--fetches` times per
mode at `--concurrency`, modes interleaved, `--rounds` rounds. Reports the median and range of
the per-fetch wall time for each mode. Plain http on loopback, so no TLS handshake is counted
(TLS would add one handshake per fetch).

    .venv/bin/python bench/fetch_pool.py                        # ~10 s
    .venv/bin/python bench/fetch_pool.py --concurrency 8 --fetches 400 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from imagegate.fetch import ImageFetcher, fetch_image_url, guarded_client


def serve(body: bytes) -> tuple[uvicorn.Server, int]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, server.servers[0].sockets[0].getsockname()[1]


async def timed(fetch: Callable[[], Awaitable[bytes]], count: int, concurrency: int) -> float:
    """Seconds per fetch, `count` fetches by `concurrency` workers."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await fetch()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.perf_counter() - start) / count


async def main(args: argparse.Namespace) -> None:
    body = os.urandom(args.kib * 1024)
    server, port = serve(body)
    url = f"http://127.0.0.1:{port}/a.png"
    fetcher = ImageFetcher(allow_private=True, timeout_seconds=30, concurrency_per_key=args.concurrency)
    shared = guarded_client(allow_private=True)
    modes: dict[str, Callable[[], Awaitable[bytes]]] = {
        "shared pool (baseline)": lambda: fetch_image_url(
            url, client=shared, param="i", max_bytes=len(body), allow_private=True
        ),
        "pool per fetch": lambda: fetcher.fetch(url, param="i", max_bytes=len(body), key_id="bench"),
    }
    results: dict[str, list[float]] = {name: [] for name in modes}
    try:
        for fetch in modes.values():  # warm-up
            assert await fetch() == body
        for _ in range(args.rounds):
            for name, fetch in modes.items():
                results[name].append(await timed(fetch, args.fetches, args.concurrency))
    finally:
        await shared.aclose()
        await fetcher.aclose()
        server.should_exit = True
    print(f"{args.fetches} fetches of {args.kib} KiB x {args.rounds} rounds, concurrency {args.concurrency}")
    for name, values in results.items():
        ms = [v * 1000 for v in values]
        print(f"  {name:24s} median {statistics.median(ms):6.2f} ms/fetch  range {min(ms):.2f}-{max(ms):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetches", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--kib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
