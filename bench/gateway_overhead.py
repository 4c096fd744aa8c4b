"""Gateway overhead: the latency and throughput imagegate adds on top of its upstream.

A fake Gemini upstream (bench/fake_gemini.py, its own process) answers every generateContent
call at once with a precomputed ~1.5 MB 1024x1024 PNG. The real gateway (`imagegate serve`, its
own process) is pointed at it. An asyncio httpx load generator (this process) then drives, at
each concurrency level:

  direct   POST {fake}/v1beta/models/gemini-3-pro-image:generateContent   (the baseline)
  gateway  POST {gateway}/v1/images/generations, response_format b64_json and url (and, with
           --formats ... both, the default answer carrying both)

with a warm-up before every measured run. Only the API call is timed (a `url` result is not
downloaded; the first response of each run is checked, and one url is fetched once to check
it serves the same bytes). Per run it reports throughput, latency p50/p95/p99, the CPU time
each process spent per request, and for the gateway the ratios to the direct baseline.

    .venv/bin/python bench/gateway_overhead.py                 # ~1 minute on 2 cores
    .venv/bin/python bench/gateway_overhead.py --quick --json /tmp/overhead.json
    .venv/bin/python bench/gateway_overhead.py --concurrency 1 8 64 --requests 100 200 400

Standalone: no imports from tests/ or from imagegate (the gateway is driven over HTTP only).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Shared by the other bench scripts, which import them from here.
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"  # a gateway child gets it first on PYTHONPATH: this checkout's code
HOST = "127.0.0.1"
MODEL = "gemini-3-pro-image-preview"
UPSTREAM_MODEL = "gemini-3-pro-image"  # what the gemini binding calls (catalog upstream_model)
GATEWAY_KEY = "bench-key"
UPSTREAM_KEY = "bench-upstream-key"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIRECT_BODY = {
    # What the gateway itself sends for {"prompt": "bench"} on this model (1:1, 1K).
    "contents": [{"role": "user", "parts": [{"text": "bench"}]}],
    "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                         "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"}},
}
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- subprocesses --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Child:
    """A subprocess in its own process group (so Ctrl-C reaches us first and we shut it down in
    order), with its output in a log file (a full pipe would stall it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """user+system CPU of the process and all its descendants (Linux /proc; 0 elsewhere)."""
        total = 0.0
        for pid in _process_tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total

    def stop(self) -> None:
        """SIGINT (graceful: uvicorn drains, a py-spy wrapper writes its profile), then harder."""
        if self.proc.poll() is None:
            stop_group(self.proc, ((signal.SIGINT, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
        else:  # the leader is gone; make sure nothing it started lingers
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


def stop_group(proc: subprocess.Popen[bytes], steps: tuple[tuple[int, float], ...]) -> None:
    """Send each signal of `steps` to the process group led by `proc`, waiting the given seconds
    for it to exit before the next one; stops as soon as it has exited."""
    for sig, wait_s in steps:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def wait_healthy(child: Child, url: str, timeout_s: float, check: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                if check is not None:
                    check(response.json())
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not healthy at {url} after {timeout_s}s ({last}):\n{child.log_tail()}")


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("imagegate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from imagegate.cli import cli; sys.exit(cli())"]


def clean_env() -> dict[str, str]:
    """Our environment without anything that would reconfigure the gateway behind our back."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("IMAGEGATE_", "GEMINI_", "OPENAI_"))}


# --- load generation -----------------------------------------------------------------------


@dataclass
class Target:
    name: str  # "direct" or "gateway"
    response_format: str | None  # None for direct
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class RunResult:
    target: str
    response_format: str | None
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    response_bytes: int
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    vs_direct: dict[str, float] | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def drive(client: httpx.AsyncClient, target: Target, total: int, concurrency: int,
                first_check: Any = None) -> tuple[list[float], list[str], float, int]:
    """`concurrency` workers share `total` requests; returns latencies (s), error strings, wall
    seconds and the size of the last response body."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    size = 0
    payload = json.dumps(target.body).encode()
    headers = {"content-type": "application/json", **target.headers}

    async def worker() -> None:
        nonlocal issued, size, first_check
        while issued < total:
            issued += 1
            t0 = time.perf_counter()
            response = await client.post(target.url, content=payload, headers=headers)
            elapsed = time.perf_counter() - t0
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:300]}")
                continue
            latencies.append(elapsed)
            size = len(response.content)
            if first_check is not None:
                check, first_check = first_check, None
                check(response)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started, size


async def measure(target: Target, total: int, warmup: int, concurrency: int, cpu_sources: dict[str, Any],
                  first_check: Any = None) -> RunResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:
        _, warm_errors, _, _ = await drive(client, target, max(warmup, concurrency), concurrency, first_check)
        if warm_errors:
            raise RuntimeError(f"{target.name} warm-up failed: {warm_errors[0]}")
        cpu_before = {name: fn() for name, fn in cpu_sources.items()}
        latencies, errors, wall, size = await drive(client, target, total, concurrency)
        cpu_after = {name: fn() for name, fn in cpu_sources.items()}
    done = len(latencies)
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    if errors:
        print(f"  ! {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    return RunResult(
        target=target.name, response_format=target.response_format, concurrency=concurrency, requests=done,
        errors=len(errors), wall_s=round(wall, 3), throughput_rps=round(done / wall, 2) if wall else 0.0,
        p50_ms=round(percentile(ms, 50), 2), p95_ms=round(percentile(ms, 95), 2),
        p99_ms=round(percentile(ms, 99), 2), mean_ms=round(sum(ms) / done, 2) if done else float("nan"),
        max_ms=round(ms[-1], 2) if ms else float("nan"), response_bytes=size,
        cpu_ms_per_request={name: round((cpu_after[name] - cpu_before[name]) * 1000 / max(done, 1), 2)
                            for name in cpu_sources},
    )


def _loadavg() -> float:
    """1-minute load average; other work on the machine skews every number here."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- response checks -----------------------------------------------------------------------


class Checks:
    """First-response checks: the gateway must hand back exactly the upstream's PNG."""

    def __init__(self) -> None:
        self.png: bytes | None = None
        self.url_example: str | None = None

    def direct(self, response: httpx.Response) -> None:
        parts = response.json()["candidates"][0]["content"]["parts"]
        png = base64.b64decode(next(p["inlineData"]["data"] for p in parts if "inlineData" in p))
        if not png.startswith(PNG_MAGIC):
            raise AssertionError("the fake upstream's image is not a PNG")
        self.png = png

    def gateway(self, response_format: str, public_url: str) -> Any:
        def check(response: httpx.Response) -> None:
            body = response.json()
            item = body["data"][0]
            if response_format in ("b64_json", "both"):
                data = base64.b64decode(item["b64_json"])
                if data != self.png:
                    raise AssertionError(f"b64_json is not the upstream's PNG ({len(data)} bytes)")
            if response_format in ("url", "both"):
                url = item.get("url")
                if not (isinstance(url, str) and url.startswith(f"{public_url}/v1/results/")):
                    raise AssertionError(f"unexpected url result: {item!r}"[:300])
                self.url_example = url
        return check

    def fetch_url_once(self) -> None:
        if self.url_example is None:
            return
        response = httpx.get(self.url_example, timeout=30.0)
        if response.status_code != 200 or response.content != self.png:
            raise AssertionError(f"GET {self.url_example} -> {response.status_code}, "
                                 f"{len(response.content)} bytes, not the upstream's PNG")


# --- reporting -----------------------------------------------------------------------------


def add_ratios(results: list[RunResult]) -> None:
    direct = {r.concurrency: r for r in results if r.target == "direct"}
    for r in results:
        base = direct.get(r.concurrency)
        if r.target == "direct" or base is None:
            continue
        r.vs_direct = {
            "p50_ratio": round(r.p50_ms / base.p50_ms, 2),
            "throughput_ratio": round(r.throughput_rps / base.throughput_rps, 3),
            "added_p50_ms": round(r.p50_ms - base.p50_ms, 2),
            "added_p95_ms": round(r.p95_ms - base.p95_ms, 2),
        }


def markdown_table(results: list[RunResult]) -> str:
    header = ("| target | response_format | clients | requests | req/s | p50 ms | p95 ms | p99 ms "
              "| p50 × direct | req/s × direct | added p50 ms | CPU ms/req gw / up / client |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    order = sorted(results, key=lambda r: (r.concurrency, r.target != "direct", r.response_format or ""))
    for r in order:
        ratios = r.vs_direct or {}
        cpu = r.cpu_ms_per_request
        cpu_text = " / ".join(f"{cpu[k]:.1f}" if k in cpu else "–" for k in ("gateway", "upstream", "client"))
        lines.append(
            f"| {r.target} | {r.response_format or '–'} | {r.concurrency} | {r.requests}"
            f"{f' ({r.errors} err)' if r.errors else ''} | {r.throughput_rps:.1f} | {r.p50_ms:.1f} | "
            f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | "
            + (f"{ratios['p50_ratio']:.2f} | {ratios['throughput_ratio']:.2f} | {ratios['added_p50_ms']:+.1f}"
               if ratios else "– | – | –")
            + f" | {cpu_text} |"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], metavar="N",
                        help="concurrent clients per run (default: 1 32)")
    parser.add_argument("--requests", type=int, nargs="+", default=None, metavar="N",
                        help="measured requests per run, one per --concurrency value or one for all "
                             "(default: 60 at concurrency 1, 200 above)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up requests before each run (default: 10, at least the concurrency)")
    parser.add_argument("--formats", nargs="+", default=["b64_json", "url"], choices=["b64_json", "url", "both"],
                        help="both: url and b64_json in one answer (the gateway's default with no response_format)")
    parser.add_argument("--quick", action="store_true", help="short smoke run (20 / 64 requests, 4 warm-up)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--gateway-log-level", default="warning",
                        help="`imagegate serve --log-level` (default warning; 'info' adds an access log line "
                             "per request)")
    parser.add_argument("--gateway-prefix", default="",
                        help="command prefix for the gateway, e.g. a profiler: "
                             "\"py-spy record -o gw.txt -f raw --\" (CPU figures then include the wrapper)")
    parser.add_argument("--gateway-workers", type=int, default=1,
                        help="`imagegate serve --workers` (default 1; with more, the gateway CPU column "
                             "counts only the supervisor process)")
    parser.add_argument("--keep-data", action="store_true", help="keep the temp dir (logs, gateway data)")
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = [(20 if c == 1 else 64) if args.quick else (60 if c == 1 else 200)
                         for c in args.concurrency]
    elif len(args.requests) == 1:
        args.requests = args.requests * len(args.concurrency)
    elif len(args.requests) != len(args.concurrency):
        parser.error("--requests takes one value, or one per --concurrency value")
    if args.warmup is None:
        args.warmup = 4 if args.quick else 10
    return args


async def run_all(args: argparse.Namespace, upstream_url: str, gateway_url: str, cpu_sources: dict[str, Any],
                  checks: Checks) -> list[RunResult]:
    direct = Target("direct", None, f"{upstream_url}/v1beta/models/{UPSTREAM_MODEL}:generateContent",
                    {"x-goog-api-key": UPSTREAM_KEY}, DIRECT_BODY)
    gateways = [
        Target("gateway", fmt, f"{gateway_url}/v1/images/generations",
               {"authorization": f"Bearer {GATEWAY_KEY}"},
               {"model": MODEL, "prompt": "bench", "response_format": fmt})
        for fmt in args.formats
    ]
    results: list[RunResult] = []
    for concurrency, total in zip(args.concurrency, args.requests, strict=True):
        for target in [direct, *gateways]:
            label = f"{target.name}{'/' + target.response_format if target.response_format else ''}"
            print(f"  {label:<16} clients={concurrency:<3} requests={total} ...", end="", flush=True,
                  file=sys.stderr)
            check = checks.direct if target.name == "direct" else checks.gateway(target.response_format or "",
                                                                                  gateway_url)
            result = await measure(target, total, args.warmup, concurrency, cpu_sources, check)
            results.append(result)
            print(f" {result.throughput_rps:7.1f} req/s  p50 {result.p50_ms:7.1f} ms", file=sys.stderr)
    return results


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    children: list[Child] = []
    atexit.register(lambda: [c.stop() for c in children])
    tmp = Path(tempfile.mkdtemp(prefix="imagegate-bench-"))
    started = time.perf_counter()
    load_before = _loadavg()
    try:
        env = clean_env()
        up_port, gw_port = free_port(), free_port()
        upstream_url, gateway_url = f"http://{HOST}:{up_port}", f"http://{HOST}:{gw_port}"
        upstream = Child("fake upstream",
                         [sys.executable, str(HERE / "fake_gemini.py"), "--host", HOST, "--port", str(up_port),
                          "--api-key", UPSTREAM_KEY], env, tmp / "upstream.log")
        children.append(upstream)
        gw_env = {**env, "GEMINI_API_KEY": UPSTREAM_KEY, "GEMINI_BASE_URL": upstream_url,
                  "IMAGEGATE_API_KEYS": GATEWAY_KEY, "IMAGEGATE_DATA_DIR": str(tmp / "data"),
                  "IMAGEGATE_PUBLIC_URL": gateway_url}
        gw_argv = [*shlex.split(args.gateway_prefix), *gateway_command(), "serve", "--host", HOST,
                   "--port", str(gw_port), "--log-level", args.gateway_log_level,
                   "--workers", str(args.gateway_workers)]
        gateway = Child("gateway", gw_argv, gw_env, tmp / "gateway.log")
        children.append(gateway)

        def gemini_configured(body: Any) -> None:
            if "gemini" not in body.get("providers", []):
                raise RuntimeError(f"gateway /health does not list gemini: {body}")

        wait_healthy(upstream, f"{upstream_url}/health", 60.0)
        wait_healthy(gateway, f"{gateway_url}/health", 60.0, gemini_configured)
        print(f"fake upstream {upstream_url} (pid {upstream.proc.pid}), gateway {gateway_url} "
              f"(pid {gateway.proc.pid}), data in {tmp}", file=sys.stderr)

        checks = Checks()
        cpu_sources = {"gateway": gateway.cpu_seconds, "upstream": upstream.cpu_seconds, "client": own_cpu_seconds}
        results = asyncio.run(run_all(args, upstream_url, gateway_url, cpu_sources, checks))
        checks.fetch_url_once()
        add_ratios(results)

        print()
        print(f"Fake upstream PNG: {len(checks.png or b'')} bytes (1024x1024); "
              f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"load average before/after {load_before:.2f}/{_loadavg():.2f}, "
              f"{time.perf_counter() - started:.0f}s total")
        print("CPU ms/req: user+system CPU per measured request of the gateway process, the fake upstream "
              "and this load generator.")
        print()
        print(markdown_table(results))
        if args.json:
            doc = {
                "benchmark": "gateway_overhead",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(_loadavg(), 2)},
                "config": {"concurrency": args.concurrency, "requests": args.requests, "warmup": args.warmup,
                           "formats": args.formats, "gateway_log_level": args.gateway_log_level,
                           "gateway_prefix": args.gateway_prefix, "png_bytes": len(checks.png or b""),
                           "model": MODEL},
                "results": [asdict(r) for r in results],
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"\nJSON results: {args.json}", file=sys.stderr)
        failed = sum(r.errors for r in results)
        if failed:
            print(f"\n{failed} requests failed; gateway log tail:\n{gateway.log_tail()}", file=sys.stderr)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for child in reversed(children):
            child.stop()
        children.clear()
        if args.keep_data:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
