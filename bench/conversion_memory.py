"""Memory under 4K conversion load: the gateway's peak RSS with and without the conversion budget.

A fake Gemini upstream (bench/fake_gemini.py, its own process) answers every call with one noisy
4096x4096 PNG (made once per run, ~24 MB; ~32 MB as base64 JSON). For each scenario a fresh
gateway process (`imagegate serve`, this checkout's src/ first on PYTHONPATH) takes concurrent
`output_format=webp`, `resolution=4K` requests, and its peak RSS (VmHWM from /proc, the kernel's
own high-water mark) is read when they are done:

  16 x 4K webp       16 concurrent requests, n=1
  32 x 4K webp       32 concurrent requests, n=1
  4 x n=10 4K webp   4 concurrent requests of 10 images each

under two configurations, interleaved (their order alternates per repeat):

  budget      the defaults: IMAGEGATE_CONVERSION_WORKERS = CPU count, the default memory budget
  unbounded   IMAGEGATE_CONVERSION_MEMORY_BYTES=0 and IMAGEGATE_CONVERSION_WORKERS=40: no memory
              budget and anyio's default 40 threads, i.e. how main behaves

Then what one 4K AVIF costs: one request through a fresh gateway (wall seconds, peak RSS growth)
and, in a bare child process, Pillow's decode+encode of the same PNG per output format (seconds,
peak RSS growth, bytes per pixel: the figures behind conversion.ENCODE_BYTES_PER_PIXEL).

    .venv/bin/python bench/conversion_memory.py                  # ~5 min on 2 cores
    .venv/bin/python bench/conversion_memory.py --repeats 1 --scenarios 16
    .venv/bin/python bench/conversion_memory.py --json /tmp/conversion.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
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

SIDE = 4096
MIB = 2**20
SCENARIOS = {"16": ("16 x 4K webp", 16, 1), "32": ("32 x 4K webp", 32, 1), "n10": ("4 x n=10 4K webp", 4, 10)}
CONFIGS = {
    "budget": {},
    "unbounded": {"IMAGEGATE_CONVERSION_MEMORY_BYTES": "0", "IMAGEGATE_CONVERSION_WORKERS": "40"},
}
PILLOW_PROBE = r"""
import io, sys, time
from PIL import Image
fmt, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
start = time.perf_counter()
with Image.open(io.BytesIO(data)) as img:
    img.load()
    out = io.BytesIO()
    img.save(out, format=fmt.upper(), **({"compress_level": 6} if fmt == "png" else {"quality": 90}))
seconds = time.perf_counter() - start
print(seconds, status("VmHWM") - before, img.size[0] * img.size[1], len(out.getvalue()))
"""


@dataclass
class Run:
    scenario: str
    config: str
    repeat: int
    peak_rss_mib: float
    wall_s: float
    ok: int
    errors: dict[str, int]


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


class Gateway:
    """A fresh `imagegate serve` process (the peak RSS of a process only ever grows)."""

    def __init__(self, tmp: Path, upstream_url: str, extra_env: dict[str, str], name: str) -> None:
        port = free_port()
        self.url = f"http://{HOST}:{port}"
        data_dir = tmp / f"data-{name}"
        env = {
            **clean_env(),
            "PYTHONPATH": str(SRC),
            "GEMINI_API_KEY": UPSTREAM_KEY,
            "GEMINI_BASE_URL": upstream_url,
            "IMAGEGATE_API_KEYS": GATEWAY_KEY,
            "IMAGEGATE_DATA_DIR": str(data_dir),
            "IMAGEGATE_PUBLIC_URL": self.url,
            **extra_env,
        }
        argv = [*gateway_command(), "serve", "--host", HOST, "--port", str(port), "--log-level", "warning"]
        self.child = Child(f"gateway {name}", argv, env, tmp / f"gateway-{name}.log")
        wait_healthy(self.child, f"{self.url}/health", 60.0)

    @property
    def pid(self) -> int:
        return self.child.proc.pid

    def stop(self) -> None:
        self.child.stop()


RESPONSE_FORMAT = "url"  # --response-format; "default" leaves the field out (the gateway then answers url + b64_json)


async def load(url: str, concurrency: int, n: int, output_format: str) -> tuple[int, dict[str, int], float]:
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": "bench",
        "resolution": "4K",
        "output_format": output_format,
        "n": n,
    }
    if RESPONSE_FORMAT != "default":
        body["response_format"] = RESPONSE_FORMAT
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    errors: dict[str, int] = {}
    ok = 0
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one() -> None:
            nonlocal ok
            response = await client.post(f"{url}/v1/images/generations", json=body, headers=headers)
            if response.status_code == 200 and len(response.json()["data"]) == n:
                ok += 1
            else:
                try:
                    code = str(response.json()["error"]["code"])
                except (ValueError, KeyError, TypeError):
                    code = "?"
                key = f"{response.status_code} {code}"
                errors[key] = errors.get(key, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return ok, errors, time.perf_counter() - start


def run_scenario(tmp: Path, upstream_url: str, key: str, config: str, repeat: int) -> Run:
    label, concurrency, n = SCENARIOS[key]
    gateway = Gateway(tmp, upstream_url, CONFIGS[config], f"{key}-{config}-{repeat}")
    try:
        ok, errors, wall = asyncio.run(load(gateway.url, concurrency, n, "webp"))
        peak = vm_hwm(gateway.pid)
    finally:
        gateway.stop()
    run = Run(label, config, repeat, round(peak / MIB, 1), round(wall, 1), ok, errors)
    print(
        f"  {label:18} {config:9} repeat {repeat}: peak RSS {run.peak_rss_mib:7.0f} MiB, {wall:5.1f} s, "
        f"{ok} ok {errors or ''}",
        file=sys.stderr,
        flush=True,
    )
    return run


def avif_through_gateway(tmp: Path, upstream_url: str) -> dict[str, Any]:
    gateway = Gateway(tmp, upstream_url, {}, "avif")
    try:
        # A warm-up at 1x1 JPEG cost would need another fake; a webp request warms the same path.
        before = vm_rss(gateway.pid)
        ok, errors, wall = asyncio.run(load(gateway.url, 1, 1, "avif"))
        peak = vm_hwm(gateway.pid)
    finally:
        gateway.stop()
    return {
        "ok": ok,
        "errors": errors,
        "wall_s": round(wall, 2),
        "rss_before_mib": round(before / MIB),
        "peak_rss_mib": round(peak / MIB),
        "growth_mib": round((peak - before) / MIB),
    }


def pillow_costs(png_path: Path) -> list[dict[str, Any]]:
    rows = []
    for fmt in ("png", "jpeg", "webp", "avif"):
        out = subprocess.run(
            [sys.executable, "-c", PILLOW_PROBE, fmt, str(png_path)], capture_output=True, text=True, check=True
        ).stdout.split()
        seconds, peak, pixels, size = float(out[0]), int(out[1]), int(out[2]), int(out[3])
        rows.append(
            {
                "format": fmt,
                "seconds": round(seconds, 2),
                "peak_mib": round(peak / MIB),
                "bytes_per_pixel": round(peak / pixels, 1),
                "output_mib": round(size / MIB, 1),
            }
        )
    return rows


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    table = []
    for label, _, _ in SCENARIOS.values():
        for config in CONFIGS:
            mine = [r for r in runs if r.scenario == label and r.config == config]
            if not mine:
                continue
            peaks = [r.peak_rss_mib for r in mine]
            walls = [r.wall_s for r in mine]
            errors: dict[str, int] = {}
            for r in mine:
                for k, v in r.errors.items():
                    errors[k] = errors.get(k, 0) + v
            table.append(
                {
                    "scenario": label,
                    "config": config,
                    "runs": len(mine),
                    "peak_rss_mib_median": statistics.median(peaks),
                    "peak_rss_mib_min": min(peaks),
                    "peak_rss_mib_max": max(peaks),
                    "wall_s_median": statistics.median(walls),
                    "ok": sum(r.ok for r in mine),
                    "errors": errors,
                }
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--no-avif", action="store_true", help="skip the AVIF cost measurement")
    parser.add_argument(
        "--response-format",
        choices=["url", "b64_json", "default"],
        default="url",
        help="what the requests ask for (default url; 'default' sends no response_format, so "
        "the gateway answers with both url and b64_json)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    global RESPONSE_FORMAT
    RESPONSE_FORMAT = args.response_format
    from fake_gemini import make_png

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imagegate-convbench-") as tmp_name:
        tmp = Path(tmp_name)
        png_path = tmp / "4k.png"
        png_path.write_bytes(make_png(SIDE))
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
                "--png",
                str(png_path),
            ],
            clean_env(),
            tmp / "upstream.log",
        )
        try:
            wait_healthy(upstream, f"{upstream_url}/health", 60.0)
            print(f"4K PNG: {png_path.stat().st_size / MIB:.1f} MiB; {os.cpu_count()} CPUs", file=sys.stderr)
            runs = []
            for repeat in range(args.repeats):
                for key in args.scenarios:
                    order = list(CONFIGS) if repeat % 2 == 0 else list(reversed(CONFIGS))
                    runs += [run_scenario(tmp, upstream_url, key, config, repeat) for config in order]
            avif = None if args.no_avif else avif_through_gateway(tmp, upstream_url)
            pillow = pillow_costs(png_path)
        finally:
            upstream.stop()
    table = summarize(runs)
    print(
        f"\n{args.repeats} repeats, response_format {RESPONSE_FORMAT}, {time.perf_counter() - started:.0f} s total, "
        f"load average now "
        f"{os.getloadavg()[0]:.2f}\n"
    )
    print("| scenario | config | peak RSS MiB, median (range) | wall s, median | ok | errors |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(
            f"| {row['scenario']} | {row['config']} | {row['peak_rss_mib_median']:.0f} "
            f"({row['peak_rss_mib_min']:.0f}-{row['peak_rss_mib_max']:.0f}) | {row['wall_s_median']:.1f} | "
            f"{row['ok']} | {row['errors'] or ''} |"
        )
    if avif is not None:
        print(f"\nOne 4K AVIF request through the gateway: {avif}")
    print("\nPillow decode + encode of the 4K PNG, in a bare process:\n")
    print("| format | seconds | peak RSS growth MiB | bytes/pixel | output MiB |")
    print("|---|---|---|---|---|")
    for row in pillow:
        print(
            f"| {row['format']} | {row['seconds']} | {row['peak_mib']} | {row['bytes_per_pixel']} | "
            f"{row['output_mib']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "response_format": RESPONSE_FORMAT,
                    "runs": [asdict(r) for r in runs],
                    "summary": table,
                    "avif": avif,
                    "pillow": pillow,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
