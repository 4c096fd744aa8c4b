"""Disk under sustained url-format load: the results directory with and without a size budget.

A fake Gemini upstream (bench/fake_gemini.py) answers at once with a ~1.5 MB 1024x1024 PNG; a
fresh gateway process (`imagegate serve`, this checkout's src/ first on PYTHONPATH) with a long
result TTL (a day, so expiry frees nothing) takes `--concurrency` clients sending
`response_format=url` requests back to back for `--seconds`, while this process samples the size
of the results directory every 0.25 s. Two configurations, interleaved, `--repeats` times:

  budget      IMAGEGATE_RESULTS_MAX_BYTES=--budget-mb MB: the directory must stay within it
  unbounded   IMAGEGATE_RESULTS_MAX_BYTES=0: no budget (how main behaves): it grows without bound

Per run: requests/s, the write rate (bytes of results stored per second), the largest and the
final directory size, and errors. Everything lives in a temporary directory deleted at the end.

    .venv/bin/python bench/disk_budget.py                 # ~2 min on 2 cores
    .venv/bin/python bench/disk_budget.py --seconds 10 --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import (  # noqa: E402
    GATEWAY_KEY,
    HERE,
    HOST,
    MODEL,
    SRC,
    UPSTREAM_KEY,
    Child,
    clean_env,
    free_port,
    gateway_command,
    wait_healthy,
)

MB = 1_000_000


@dataclass
class Run:
    config: str
    repeat: int
    requests: int
    errors: dict[str, int]
    seconds: float
    max_dir_mb: float
    final_dir_mb: float
    stored_mb: float  # bytes the gateway wrote into the directory (ok requests x result size)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def write_mb_s(self) -> float:
        return self.stored_mb / self.seconds


def dir_bytes(directory: Path) -> int:
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:  # evicted while we looked
                    pass
    except FileNotFoundError:
        pass
    return total


class Sampler(threading.Thread):
    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.done.wait(0.25):
            self.samples.append((time.perf_counter() - start, dir_bytes(self.directory)))


async def load(url: str, concurrency: int, seconds: float) -> tuple[int, dict[str, int], float, int]:
    body = {"model": MODEL, "prompt": "bench", "response_format": "url"}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    errors: dict[str, int] = {}
    ok = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        first = await client.post(f"{url}/v1/images/generations", json=body, headers=headers)
        first.raise_for_status()
        size = len((await client.get(first.json()["data"][0]["url"])).content)
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            nonlocal ok
            while time.perf_counter() < stop_at:
                response = await client.post(f"{url}/v1/images/generations", json=body, headers=headers)
                if response.status_code == 200:
                    ok += 1
                else:
                    key = f"{response.status_code} {response.json().get('error', {}).get('code')}"
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, errors, time.perf_counter() - start, size


def run_one(tmp: Path, upstream_url: str, config: str, repeat: int, args: argparse.Namespace) -> Run:
    port = free_port()
    gateway_url = f"http://{HOST}:{port}"
    data_dir = tmp / f"data-{config}-{repeat}"
    budget = str(args.budget_mb * MB) if config == "budget" else "0"
    env = {
        **clean_env(),
        "PYTHONPATH": str(SRC),
        "GEMINI_API_KEY": UPSTREAM_KEY,
        "GEMINI_BASE_URL": upstream_url,
        "IMAGEGATE_API_KEYS": GATEWAY_KEY,
        "IMAGEGATE_DATA_DIR": str(data_dir),
        "IMAGEGATE_PUBLIC_URL": gateway_url,
        "IMAGEGATE_RESULT_TTL_SECONDS": "86400",
        "IMAGEGATE_RESULTS_MAX_BYTES": budget,
    }
    gateway = Child(
        f"gateway {config}",
        [*gateway_command(), "serve", "--host", HOST, "--port", str(port), "--log-level", "warning"],
        env,
        tmp / f"gateway-{config}-{repeat}.log",
    )
    sampler = Sampler(data_dir / "results")
    try:
        wait_healthy(gateway, f"{gateway_url}/health", 60.0)
        sampler.start()
        ok, errors, seconds, size = asyncio.run(load(gateway_url, args.concurrency, args.seconds))
    finally:
        sampler.done.set()
        sampler.join()
        final = dir_bytes(data_dir / "results")
        gateway.stop()
    peak = max([s for _, s in sampler.samples] + [final])
    run = Run(config, repeat, ok, errors, seconds, peak / MB, final / MB, ok * size / MB)
    print(
        f"  {config:9} repeat {repeat}: {run.rps:5.1f} req/s, writes {run.write_mb_s:5.1f} MB/s, "
        f"dir max {run.max_dir_mb:7.1f} MB, final {run.final_dir_mb:7.1f} MB, errors {errors or 0}",
        file=sys.stderr,
        flush=True,
    )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mb", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-diskbench-") as tmp_name:
        tmp = Path(tmp_name)
        up_port = free_port()
        upstream_url = f"http://{HOST}:{up_port}"
        upstream = Child(
            "fake upstream",
            [
                sys.executable,
                str(HERE / "fake_gemini.py"),
                "--host",
                HOST,
                "--port",
                str(up_port),
                "--api-key",
                UPSTREAM_KEY,
            ],
            clean_env(),
            tmp / "upstream.log",
        )
        try:
            wait_healthy(upstream, f"{upstream_url}/health", 60.0)
            for repeat in range(args.repeats):
                order = ["budget", "unbounded"] if repeat % 2 == 0 else ["unbounded", "budget"]
                runs += [run_one(tmp, upstream_url, config, repeat, args) for config in order]
        finally:
            upstream.stop()
    print(
        f"\n{args.repeats} repeats of {args.seconds:g} s at {args.concurrency} clients, budget "
        f"{args.budget_mb} MB, {os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s total, "
        f"load average now {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| config | req/s, median (range) | write MB/s, median (range) | dir max MB, median (range) | "
        "dir final MB, median | errors |"
    )
    print("|---|---|---|---|---|---|")

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    for config in ("budget", "unbounded"):
        mine = [r for r in runs if r.config == config]
        errors: dict[str, Any] = {}
        for r in mine:
            for k, v in r.errors.items():
                errors[k] = errors.get(k, 0) + v
        print(
            f"| {config} | {cell([r.rps for r in mine])} | {cell([r.write_mb_s for r in mine])} | "
            f"{cell([r.max_dir_mb for r in mine])} | {statistics.median([r.final_dir_mb for r in mine]):.1f} | "
            f"{errors or 0} |"
        )
    over = [r for r in runs if r.config == "budget" and r.max_dir_mb > args.budget_mb]
    if over:
        print(f"\nBUDGET EXCEEDED in {len(over)} runs", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
