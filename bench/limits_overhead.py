"""What a key's limits add to one request: the admit stage's rate-limit take and budget reservation,
then the settle, in-process and over a real Redis (a redis-server of its own on loopback).

    .venv/bin/python bench/limits_overhead.py             # ~10 s
    .venv/bin/python bench/limits_overhead.py --requests 5000 --concurrency 1 16 64

Each "request" is what the pipeline does for a key with both limits set: `take_rate` (requests and
images per minute), `reserve` (day and month budgets), `settle` (a background task), for many keys
so no limit is hit. Rows: backend, concurrency, requests per second, mean microseconds per request.
The Redis server, its data (none is saved) and the keys are gone when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import time

from imagegate.limits import Limits, LocalLimitState, RedisLimitState, redis_client
from imagegate.policy import Budget, KeyPolicy, RateLimits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def nothing_spent(key_id: str, since: float) -> float:
    return 0.0


def policies(count: int) -> list[KeyPolicy]:
    return [
        KeyPolicy(
            key_id=f"bench-{i}",
            name="bench",
            rate_limits=RateLimits(requests_per_minute=10**6, images_per_minute=10**6),
            budget=Budget(usd_per_day=10**6, usd_per_month=10**7),
        )
        for i in range(count)
    ]


async def run(limits: Limits, requests: int, concurrency: int) -> float:
    keys = policies(64)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            policy = keys[queue.get_nowait() % len(keys)]
            await limits.take_rate(policy, 1)
            reservation = await limits.reserve(policy, 0.04, ttl=660)
            limits.settle(reservation, 0.04)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await limits.drain()
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.5)
        print(f"{'backend':8} {'conc':>5} {'req/s':>10} {'us/req':>9}")
        for concurrency in args.concurrency:
            for backend in ("local", "redis"):
                client = redis_client(f"redis://127.0.0.1:{port}/0") if backend == "redis" else None
                state = RedisLimitState(client) if client is not None else LocalLimitState()
                limits = Limits(state, nothing_spent)
                await run(limits, min(200, args.requests), concurrency)  # warm: scripts loaded, connections open
                seconds = await run(limits, args.requests, concurrency)
                print(
                    f"{backend:8} {concurrency:>5} {args.requests / seconds:>10.0f} {seconds / args.requests * 1e6:>9.1f}"
                )
                await limits.aclose()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    asyncio.run(main(parser.parse_args()))
