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
    "generationConfig": {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"},
    },
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
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

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


def start_fake_upstream(env: dict[str, str], log: Path, *extra: str) -> tuple[Child, str]:
    """bench/fake_gemini.py on a free loopback port (the other bench scripts start theirs here too);
    returns the child and its base URL. `extra`: more of its command-line options."""
    port = free_port()
    command = [sys.executable, str(HERE / "fake_gemini.py"), "--host", HOST, "--port", str(port)]
    child = Child("fake upstream", [*command, "--api-key", UPSTREAM_KEY, *extra], env, log)
    return child, f"http://{HOST}:{port}"


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("imagegate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from imagegate.cli import cli; sys.exit(cli())"]


def clean_env() -> dict[str, str]:
    """Our environment without anything that would reconfigure the gateway behind our back."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGATE_", "GEMINI_", "OPENAI_"))}


# --- load generation -----------------------------------------------------------------------


@dataclass
class Target:
    name: str  # "direct", "gateway" (this checkout), "before" (--baseline-src) or "litellm"
    response_format: str | None  # None for direct
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    server: str  # the process serving it, a key of the CPU sources ("upstream" for direct)


@dataclass
class RunResult:
    target: str
    response_format: str | None
    concurrency: int
    round: int
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


async def drive(
    client: httpx.AsyncClient, target: Target, total: int, concurrency: int, first_check: Any = None
) -> tuple[list[float], list[str], float, int]:
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


async def measure(
    target: Target,
    total: int,
    warmup: int,
    concurrency: int,
    cpu_sources: dict[str, Any],
    first_check: Any = None,
    round_no: int = 0,
) -> RunResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:
        _, warm_errors, _, _ = await drive(client, target, max(warmup, concurrency), concurrency, first_check)
        if warm_errors:
            raise RuntimeError(f"{target.name} warm-up failed: {warm_errors[0]}")
        cpu_before = {name: fn() for name, fn in cpu_sources.items()}
        latencies, errors, wall, size = await drive(client, target, total, concurrency)
        cpu_after = {name: fn() for name, fn in cpu_sources.items()}
    return summarize_run(
        target.name, target.response_format, concurrency, round_no, latencies, errors, wall, size, cpu_before, cpu_after
    )


def summarize_run(
    target: str,
    response_format: str,
    concurrency: int,
    round_no: int,
    latencies: list[float],
    errors: list[str],
    wall: float,
    response_bytes: int,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
) -> RunResult:
    """One run's figures from its latencies (seconds), errors, wall time and CPU readings (seconds,
    by source, before and after). Also bench/shared_backends.py's."""
    done = len(latencies)
    ms = sorted(v * 1000 for v in latencies)
    if errors:
        print(f"  ! {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    return RunResult(
        target=target,
        response_format=response_format,
        concurrency=concurrency,
        round=round_no,
        requests=done,
        errors=len(errors),
        wall_s=round(wall, 3),
        throughput_rps=round(done / wall, 2) if wall else 0.0,
        p50_ms=round(percentile(ms, 50), 2),
        p95_ms=round(percentile(ms, 95), 2),
        p99_ms=round(percentile(ms, 99), 2),
        mean_ms=round(sum(ms) / done, 2) if done else float("nan"),
        max_ms=round(ms[-1], 2) if ms else float("nan"),
        response_bytes=response_bytes,
        cpu_ms_per_request={
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / max(done, 1), 2) for name in cpu_before
        },
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
    """First-response checks: every server must hand back exactly the upstream's PNG."""

    def __init__(self) -> None:
        self.png: bytes | None = None
        self.url_examples: dict[str, str] = {}  # target name -> one result url it returned

    def direct(self, response: httpx.Response) -> None:
        parts = response.json()["candidates"][0]["content"]["parts"]
        png = base64.b64decode(next(p["inlineData"]["data"] for p in parts if "inlineData" in p))
        if not png.startswith(PNG_MAGIC):
            raise AssertionError("the fake upstream's image is not a PNG")
        self.png = png

    def gateway(self, name: str, response_format: str, public_url: str) -> Any:
        def check(response: httpx.Response) -> None:
            body = response.json()
            item = body["data"][0]
            if response_format in ("b64_json", "both"):
                data = base64.b64decode(item["b64_json"])
                if data != self.png:
                    raise AssertionError(f"{name}: b64_json is not the upstream's PNG ({len(data)} bytes)")
            if response_format in ("url", "both"):
                url = item.get("url")
                if not (isinstance(url, str) and url.startswith(f"{public_url}/v1/results/")):
                    raise AssertionError(f"{name}: unexpected url result: {item!r}"[:300])
                self.url_examples[name] = url

        return check

    def litellm(self, response: httpx.Response) -> None:
        """LiteLLM answers OpenAI's shape with the upstream's base64 as b64_json."""
        item = response.json()["data"][0]
        data = base64.b64decode(item.get("b64_json") or "")
        if data != self.png:
            raise AssertionError(f"litellm: b64_json is not the upstream's PNG ({len(data)} bytes): {str(item)[:200]}")

    def fetch_urls_once(self) -> None:
        for name, url in self.url_examples.items():
            response = httpx.get(url, timeout=30.0)
            if response.status_code != 200 or response.content != self.png:
                raise AssertionError(
                    f"{name}: GET {url} -> {response.status_code}, "
                    f"{len(response.content)} bytes, not the upstream's PNG"
                )


# --- LiteLLM's proxy -----------------------------------------------------------------------

LITELLM_KEY = "sk-bench-litellm"


def litellm_config(upstream_url: str) -> str:
    """LiteLLM's proxy config: Nano Banana Pro on the Gemini API, pointed at the fake. LiteLLM's
    Gemini image transformation (litellm/llms/gemini/image_generation/transformation.py, 1.108)
    posts to `{api_base}/models/{model}:generateContent` with `x-goog-api-key`, so api_base is the
    fake's /v1beta. Spend logs and callbacks are off: no database, nothing but the proxying."""
    return "\n".join(
        [
            "model_list:",
            f"  - model_name: {MODEL}",
            "    litellm_params:",
            f"      model: gemini/{MODEL}",
            f"      api_base: {upstream_url}/v1beta",
            f"      api_key: {UPSTREAM_KEY}",
            "    model_info:",
            "      mode: image_generation",
            "litellm_settings:",
            "  telemetry: false",
            "  drop_params: true",
            "general_settings:",
            f"  master_key: {LITELLM_KEY}",
            "  disable_spend_logs: true",
            "",
        ]
    )


def litellm_env(env: dict[str, str]) -> dict[str, str]:
    # The packaged cost map, not a download from GitHub at start-up (this machine has no internet).
    return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}


# --- reporting -----------------------------------------------------------------------------

Key = tuple[str, str | None, int]  # (target, response_format, concurrency)


def add_ratios(results: list[RunResult]) -> None:
    """Each run against the direct run of the same round and concurrency."""
    direct = {(r.round, r.concurrency): r for r in results if r.target == "direct"}
    for r in results:
        base = direct.get((r.round, r.concurrency))
        if r.target == "direct" or base is None:
            continue
        r.vs_direct = {
            "p50_ratio": round(r.p50_ms / base.p50_ms, 2),
            "throughput_ratio": round(r.throughput_rps / base.throughput_rps, 3),
            "added_p50_ms": round(r.p50_ms - base.p50_ms, 2),
            "added_p95_ms": round(r.p95_ms - base.p95_ms, 2),
        }


def median(values: list[float]) -> float:
    return percentile(sorted(values), 50) if values else float("nan")


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median, and [min, max] when there is more than one value."""
    if not values:
        return "–"
    text = fmt.format(median(values))
    if len(values) > 1:
        text += f" [{fmt.format(min(values))}, {fmt.format(max(values))}]"
    return text


def grouped(results: list[RunResult]) -> dict[Key, list[RunResult]]:
    groups: dict[Key, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.target, r.response_format, r.concurrency), []).append(r)
    return groups


TARGET_ORDER = {"direct": 0, "gateway": 1, "before": 2, "litellm": 3}


def markdown_table(results: list[RunResult]) -> str:
    """One row per (target, format, clients): medians over the rounds, [min, max] when repeated."""
    header = (
        "| target | response_format | clients | rounds x requests | req/s | p50 ms | p95 ms | p99 ms "
        "| req/s × direct | added p50 ms | CPU ms/req server / upstream / client |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    groups = grouped(results)
    for (target, fmt, conc), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][2], TARGET_ORDER.get(kv[0][0], 9), kv[0][1] or "")
    ):
        ratios = [r.vs_direct for r in runs if r.vs_direct]
        # The serving process's CPU source has the target's name (none of its own for direct).
        cpu = " / ".join(
            f"{median([r.cpu_ms_per_request.get(k, float('nan')) for r in runs]):.1f}" if k else "–"
            for k in ("" if target == "direct" else target, "upstream", "client")
        )
        errors = sum(r.errors for r in runs)
        lines.append(
            f"| {target} | {fmt or '–'} | {conc} | {len(runs)} x {runs[0].requests}"
            f"{f' ({errors} err)' if errors else ''} | {spread([r.throughput_rps for r in runs])} "
            f"| {spread([r.p50_ms for r in runs])} | {spread([r.p95_ms for r in runs])} "
            f"| {spread([r.p99_ms for r in runs])} | "
            + (
                f"{spread([x['throughput_ratio'] for x in ratios], '{:.2f}')} "
                f"| {spread([x['added_p50_ms'] for x in ratios], '{:+.1f}')}"
                if ratios
                else "– | –"
            )
            + f" | {cpu} |"
        )
    return "\n".join(lines)


def comparisons(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per (format, clients), ratios of runs in the same round: gateway/before (this checkout
    against --baseline-src) and gateway/litellm, before/litellm (throughput; CPU per request)."""
    by_round: dict[tuple[str, str | None, int, int], RunResult] = {
        (r.target, r.response_format, r.concurrency, r.round): r for r in results
    }
    rows = []
    keys = sorted(
        {(r.response_format, r.concurrency) for r in results if r.target == "gateway"}, key=lambda k: (k[1], k[0] or "")
    )
    rounds = sorted({r.round for r in results})
    for fmt, conc in keys:
        row: dict[str, Any] = {"response_format": fmt, "concurrency": conc}
        for other, other_fmt in (("before", fmt), ("litellm", "b64_json")):
            rps, cpu = [], []
            for rnd in rounds:
                mine, theirs = by_round.get(("gateway", fmt, conc, rnd)), by_round.get((other, other_fmt, conc, rnd))
                if mine is None or theirs is None or not theirs.throughput_rps:
                    continue
                rps.append(round(mine.throughput_rps / theirs.throughput_rps, 3))
                mine_cpu, theirs_cpu = mine.cpu_ms_per_request.get("gateway"), theirs.cpu_ms_per_request.get(other)
                if mine_cpu and theirs_cpu:
                    cpu.append(round(mine_cpu / theirs_cpu, 3))
            if rps:
                row[f"vs_{other}"] = {"throughput_ratio": rps, "cpu_ratio": cpu}
        if len(row) > 2:
            rows.append(row)
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| response_format | clients | gateway/before req/s | gateway/before CPU per req "
        "| gateway/litellm req/s | gateway/litellm CPU per req |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        cells = []
        for other in ("before", "litellm"):
            ratio = row.get(f"vs_{other}")
            cells += (
                [spread(ratio["throughput_ratio"], "{:.2f}"), spread(ratio["cpu_ratio"], "{:.2f}")]
                if ratio
                else ["–", "–"]
            )
        lines.append(f"| {row['response_format']} | {row['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_checks(results: list[RunResult], rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each from the medians of this run."""
    groups = grouped(results)
    lines = []
    top = max(r.concurrency for r in results)
    for (target, fmt, conc), runs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1] or "")):
        if target != "gateway":
            continue
        ratios = [r.vs_direct for r in runs if r.vs_direct]
        if not ratios:
            continue
        if conc == 1:
            added = median([x["added_p50_ms"] for x in ratios])
            lines.append(
                f"{fmt}, 1 client: added p50 {added:+.1f} ms (target <= 3 ms): {'met' if added <= 3 else 'NOT met'}"
            )
        if conc == top and conc > 1:
            ratio = median([x["throughput_ratio"] for x in ratios])
            goal = 0.8 if fmt == "b64_json" else 0.7
            lines.append(
                f"{fmt}, {conc} clients: {ratio:.2f}x direct throughput (target >= {goal}x): "
                f"{'met' if ratio >= goal else 'NOT met'}"
            )
    for row in rows:
        lite = row.get("vs_litellm")
        if lite and row["concurrency"] == top:
            ratio = median(lite["throughput_ratio"])
            lines.append(
                f"{row['response_format']}, {top} clients: {ratio:.2f}x LiteLLM's throughput "
                f"(target >= 2.8x): {'met' if ratio >= 2.8 else 'NOT met'}"
            )
    return lines


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 32],
        metavar="N",
        help="concurrent clients per run (default: 1 32)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="measured requests per run, one per --concurrency value or one for all "
        "(default: 60 at concurrency 1, 200 above)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up requests before each run (default: 10, at least the concurrency)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["b64_json", "url"],
        choices=["b64_json", "url", "both"],
        help="both: url and b64_json in one answer (the gateway's default with no response_format)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: every target runs once per round, interleaved (the order of this "
        "checkout and the baseline alternates); tables give medians and [min, max]",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run a gateway from this source tree (a checkout, or its src/), same "
        "venv, interleaved with this checkout's: `before` rows and gateway/before ratios",
    )
    parser.add_argument(
        "--litellm",
        default=None,
        metavar="PATH",
        help="also run LiteLLM's proxy (this `litellm` executable) on the same fake "
        "upstream, b64_json only (it does not host images)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        choices=["direct", "gateway", "before", "litellm"],
        help="run only these targets (direct is needed for the × direct columns)",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (20 / 64 requests, 4 warm-up)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--gateway-log-level",
        default="warning",
        help="`imagegate serve --log-level` (default warning; 'info' adds an access log line per request)",
    )
    parser.add_argument(
        "--gateway-prefix",
        default="",
        help="command prefix for this checkout's gateway, e.g. a profiler: "
        '"py-spy record -o gw.txt -f raw --" (CPU figures then include the wrapper)',
    )
    parser.add_argument(
        "--gateway-env",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for this checkout's gateway (not the baseline's)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="`imagegate serve --workers` (default 1; with more, the gateway CPU column "
        "counts only the supervisor process)",
    )
    parser.add_argument(
        "--side",
        type=int,
        default=1024,
        help="the fake upstream's PNG side in pixels (4096: a 4K image, ~30 MB of base64)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temp dir (logs, gateway data)")
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = [(20 if c == 1 else 64) if args.quick else (60 if c == 1 else 200) for c in args.concurrency]
    elif len(args.requests) == 1:
        args.requests = args.requests * len(args.concurrency)
    elif len(args.requests) != len(args.concurrency):
        parser.error("--requests takes one value, or one per --concurrency value")
    if args.warmup is None:
        args.warmup = 4 if args.quick else 10
    if args.baseline_src is not None:
        src = args.baseline_src.resolve()
        args.baseline_src = src / "src" if (src / "src" / "imagegate").is_dir() else src
        if not (args.baseline_src / "imagegate").is_dir():
            parser.error(f"--baseline-src: no imagegate package under {src}")
    for item in args.gateway_env:
        if "=" not in item:
            parser.error(f"--gateway-env takes NAME=VALUE, not {item!r}")
    return args


def round_targets(
    args: argparse.Namespace, upstream_url: str, gateway_urls: dict[str, str], litellm_url: str | None, round_no: int
) -> list[Target]:
    """The targets of one round at one concurrency, in the order they run: per format this
    checkout and the baseline side by side (their order alternating by round), LiteLLM last."""
    targets = [
        Target(
            "direct",
            None,
            f"{upstream_url}/v1beta/models/{UPSTREAM_MODEL}:generateContent",
            {"x-goog-api-key": UPSTREAM_KEY},
            DIRECT_BODY,
            "upstream",
        )
    ]
    names = list(gateway_urls)
    if round_no % 2:
        names.reverse()
    for fmt in args.formats:
        for name in names:
            targets.append(
                Target(
                    name,
                    fmt,
                    f"{gateway_urls[name]}/v1/images/generations",
                    {"authorization": f"Bearer {GATEWAY_KEY}"},
                    {"model": MODEL, "prompt": "bench", "response_format": fmt},
                    name,
                )
            )
    if litellm_url is not None:
        targets.append(
            Target(
                "litellm",
                "b64_json",
                f"{litellm_url}/v1/images/generations",
                {"authorization": f"Bearer {LITELLM_KEY}"},
                {"model": MODEL, "prompt": "bench", "response_format": "b64_json"},
                "litellm",
            )
        )
    if args.only:
        targets = [t for t in targets if t.name in args.only]
    return targets


async def run_all(
    args: argparse.Namespace,
    upstream_url: str,
    gateway_urls: dict[str, str],
    litellm_url: str | None,
    cpu_sources: dict[str, Any],
    checks: Checks,
) -> list[RunResult]:
    results: list[RunResult] = []
    if args.only and "direct" not in args.only:  # the checks compare against the upstream's PNG: fetch it once
        direct = round_targets(argparse.Namespace(**{**vars(args), "only": None}), upstream_url, {}, None, 0)[0]
        await measure(direct, 1, 1, 1, {}, checks.direct)
    for round_no in range(args.repeat):
        for concurrency, total in zip(args.concurrency, args.requests, strict=True):
            for target in round_targets(args, upstream_url, gateway_urls, litellm_url, round_no):
                label = f"{target.name}{'/' + target.response_format if target.response_format else ''}"
                print(
                    f"  [{round_no + 1}/{args.repeat}] {label:<17} clients={concurrency:<3} requests={total} ...",
                    end="",
                    flush=True,
                    file=sys.stderr,
                )
                if target.name == "direct":
                    check = checks.direct
                elif target.name == "litellm":
                    check = checks.litellm
                else:
                    check = checks.gateway(target.name, target.response_format or "", gateway_urls[target.name])
                result = await measure(target, total, args.warmup, concurrency, cpu_sources, check, round_no)
                results.append(result)
                print(f" {result.throughput_rps:7.1f} req/s  p50 {result.p50_ms:7.1f} ms", file=sys.stderr)
    return results


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def start_gateway(
    name: str,
    src: Path,
    prefix: str,
    extra_env: dict[str, str],
    env: dict[str, str],
    upstream_url: str,
    tmp: Path,
    args: argparse.Namespace,
) -> tuple[Child, str]:
    """`imagegate serve` from the source tree `src` (first on PYTHONPATH, ahead of the venv's
    own install), with its own port and data dir."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    gw_env = {
        **env,
        "PYTHONPATH": str(src),
        "GEMINI_API_KEY": UPSTREAM_KEY,
        "GEMINI_BASE_URL": upstream_url,
        "IMAGEGATE_API_KEYS": GATEWAY_KEY,
        "IMAGEGATE_DATA_DIR": str(tmp / f"data-{name}"),
        "IMAGEGATE_PUBLIC_URL": url,
        **extra_env,
    }
    argv = [
        *shlex.split(prefix),
        *gateway_command(),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        args.gateway_log_level,
        "--workers",
        str(args.gateway_workers),
    ]
    return Child(name, argv, gw_env, tmp / f"{name}.log"), url


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
        upstream, upstream_url = start_fake_upstream(env, tmp / "upstream.log", "--side", str(args.side))
        children.append(upstream)
        extra = dict(item.split("=", 1) for item in args.gateway_env)
        gateways: dict[str, tuple[Child, str]] = {
            "gateway": start_gateway("gateway", SRC, args.gateway_prefix, extra, env, upstream_url, tmp, args)
        }
        if args.baseline_src is not None:
            gateways["before"] = start_gateway("before", args.baseline_src, "", {}, env, upstream_url, tmp, args)
        children += [child for child, _ in gateways.values()]
        litellm: Child | None = None
        litellm_url = None
        if args.litellm:
            port = free_port()
            litellm_url = f"http://{HOST}:{port}"
            config = tmp / "litellm.yaml"
            config.write_text(litellm_config(upstream_url))
            litellm = Child(
                "litellm",
                [args.litellm, "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"],
                litellm_env(env),
                tmp / "litellm.log",
            )
            children.append(litellm)

        def gemini_configured(body: Any) -> None:
            if "gemini" not in body.get("providers", []):
                raise RuntimeError(f"gateway /health does not list gemini: {body}")

        wait_healthy(upstream, f"{upstream_url}/health", 60.0)
        for child, url in gateways.values():
            wait_healthy(child, f"{url}/health", 60.0, gemini_configured)
        if litellm is not None:
            wait_healthy(litellm, f"{litellm_url}/health/liveliness", 180.0)
        print(
            f"fake upstream {upstream_url} (pid {upstream.proc.pid}); "
            + "; ".join(f"{name} {url} (pid {child.proc.pid})" for name, (child, url) in gateways.items())
            + (f"; litellm {litellm_url} (pid {litellm.proc.pid})" if litellm else "")
            + f"; data in {tmp}",
            file=sys.stderr,
        )

        checks = Checks()
        cpu_sources: dict[str, Any] = {name: child.cpu_seconds for name, (child, _) in gateways.items()}
        if litellm is not None:
            cpu_sources["litellm"] = litellm.cpu_seconds
        cpu_sources |= {"upstream": upstream.cpu_seconds, "client": own_cpu_seconds}
        gateway_urls = {name: url for name, (_, url) in gateways.items()}
        results = asyncio.run(run_all(args, upstream_url, gateway_urls, litellm_url, cpu_sources, checks))
        checks.fetch_urls_once()
        add_ratios(results)
        rows = comparisons(results)

        print()
        print(
            f"Fake upstream PNG: {len(checks.png or b'')} bytes ({args.side}x{args.side}); "
            f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"load average before/after {load_before:.2f}/{_loadavg():.2f}, "
            f"{time.perf_counter() - started:.0f}s total, {args.repeat} round(s)"
        )
        print(
            f"gateway: {SRC}"
            + (f"; before: {args.baseline_src}" if args.baseline_src else "")
            + (f"; litellm: {args.litellm}" if args.litellm else "")
        )
        print(
            "CPU ms/req: user+system CPU per measured request of the process serving the target, the fake "
            "upstream and this load generator. Medians over rounds, [min, max] when repeated."
        )
        print()
        print(markdown_table(results))
        if rows:
            print()
            print("Ratios of runs in the same round (median [min, max]):")
            print()
            print(comparison_table(rows))
        print()
        for line in target_checks(results, rows):
            print(f"- {line}")
        if args.json:
            doc = {
                "benchmark": "gateway_overhead",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(_loadavg(), 2),
                },
                "config": {
                    "concurrency": args.concurrency,
                    "requests": args.requests,
                    "warmup": args.warmup,
                    "formats": args.formats,
                    "repeat": args.repeat,
                    "gateway_log_level": args.gateway_log_level,
                    "gateway_prefix": args.gateway_prefix,
                    "gateway_env": args.gateway_env,
                    "gateway_src": str(SRC),
                    "baseline_src": str(args.baseline_src) if args.baseline_src else None,
                    "litellm": args.litellm,
                    "png_bytes": len(checks.png or b""),
                    "side": args.side,
                    "model": MODEL,
                },
                "results": [asdict(r) for r in results],
                "comparisons": rows,
                "targets": target_checks(results, rows),
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"\nJSON results: {args.json}", file=sys.stderr)
        failed = sum(r.errors for r in results)
        if failed:
            print(
                f"\n{failed} requests failed; log tails:\n"
                + "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in children),
                file=sys.stderr,
            )
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
