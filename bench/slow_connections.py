"""Slow connections: does the gateway keep serving normal clients while 1,100 slow-loris
connections are open, how long do those live, and how fast does the log grow when accept() fails?

Two ways of serving the same app, interleaved in one run and repeated:

  baseline  the app under plain `uvicorn.run(create_app(settings), ...)`, as `imagegate serve` did
            before src/imagegate/server/serving.py
  guarded   `imagegate serve` (header and idle timeouts, connection cap, throttled accept errors)

Phase "slow" (per mode and repeat): the gateway (own process, soft RLIMIT_NOFILE --soft-nofile,
hard limit unchanged, like a default distro shell) in front of bench/fake_gemini.py. The bench
opens --slow connections: half drip a request head a byte every --drip seconds, half send a
whole head (content-length 100000) and drip the body. Meanwhile --clients normal clients send
`POST /v1/images/generations` (response_format url, a new connection each, 5 s timeout) for
--slow-seconds. Reported: the normal clients' success rate and latency, how long the slow
connections lived (until the server closed them), and the log's growth.

Phase "accept": the gateway under a hard descriptor limit of --low-nofile, 400 idle connections
held for --accept-seconds: accept() fails with EMFILE; reported is the log's growth in bytes/s.
The guarded server is run with IMAGEGATE_MAX_CONNECTIONS far above the limit so that accept()
does fail (its default cap would refuse connections before that), and with its default cap.

    PYTHONPATH=src .venv/bin/python bench/slow_connections.py             # ~2 minutes
    PYTHONPATH=src .venv/bin/python bench/slow_connections.py --repeats 1 --slow-seconds 12 --json /tmp/slow.json

Everything it starts is killed and its temp dir deleted at the end (--keep-data keeps the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import GATEWAY_KEY, HERE, HOST, MODEL, UPSTREAM_KEY, clean_env, free_port, stop_group  # noqa: E402

BASELINE_CODE = (
    "import uvicorn; from imagegate.config import Settings; from imagegate.server import create_app; "
    "s = Settings(); uvicorn.run(create_app(s), host=s.host, port=s.port, log_level='info')"
)
HEAD = (
    f"POST /v1/images/generations HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {GATEWAY_KEY}\r\n"
    "content-type: application/json\r\n"
).encode()


def _nofile(soft: int, hard: int | None) -> Any:
    def apply() -> None:
        current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, current if hard is None else hard))

    return apply


class Child:
    """A subprocess in its own session, its output in a log file; stop() kills its whole group."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, nofile: tuple[int, int | None] | None = None
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_nofile(*nofile) if nofile else None,
        )

    def log_size(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def stop(self) -> None:
        stop_group(self.proc, ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)))
        self._log.close()


def wait_healthy(child: Child, url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.log_path.name} exited: {child.log_path.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout_s}s")


def gateway_argv(mode: str, port: int) -> list[str]:
    if mode == "baseline":
        return [sys.executable, "-c", BASELINE_CODE]
    return [sys.executable, "-m", "imagegate", "serve", "--host", HOST, "--port", str(port), "--log-level", "info"]


# --- the clients ----------------------------------------------------------------------------


@dataclass
class SlowStats:
    lifetimes: list[float] = field(default_factory=list)  # seconds, for those the server closed
    still_open: int = 0
    failed_to_connect: int = 0


async def slow_connection(url_port: int, kind: str, drip_s: float, stop: asyncio.Event, stats: SlowStats) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, url_port), 10)
    except (OSError, TimeoutError):
        stats.failed_to_connect += 1
        return
    opened = time.monotonic()
    first = HEAD if kind == "head" else HEAD + b"content-length: 100000\r\n\r\n{"
    drip = b"x-slow: " + b"a" * 10_000 if kind == "head" else b" " * 100_000

    async def dripper() -> None:
        writer.write(first)
        for byte in drip:
            await asyncio.sleep(drip_s)
            writer.write(bytes([byte]))

    task = asyncio.create_task(dripper())
    closed_by_server = asyncio.create_task(_until_eof(reader))
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({closed_by_server, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if closed_by_server in done:
        stats.lifetimes.append(time.monotonic() - opened)
    else:
        stats.still_open += 1
    for pending in (task, closed_by_server, stopping):
        pending.cancel()
    writer.close()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass


async def normal_clients(url: str, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    """(sent, succeeded, latencies of the successes in ms); a new connection per request."""
    sent = ok = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    body = {"model": MODEL, "prompt": "bench", "response_format": "url"}

    async def loop() -> None:
        nonlocal sent, ok
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            timeout=5.0, limits=limits, headers={"authorization": f"Bearer {GATEWAY_KEY}"}
        ) as client:
            while time.monotonic() < deadline:
                sent += 1
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/images/generations", json=body)
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
                    continue
                if response.status_code == 200:
                    ok += 1
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return sent, ok, latencies


async def slow_phase(port: int, args: argparse.Namespace, child: Child) -> dict[str, Any]:
    url = f"http://{HOST}:{port}"
    stop = asyncio.Event()
    stats = {"head": SlowStats(), "body": SlowStats()}
    log_before = child.log_size()
    tasks = []
    for i in range(args.slow):
        kind = "head" if i % 2 == 0 else "body"
        tasks.append(asyncio.create_task(slow_connection(port, kind, args.drip, stop, stats[kind])))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # do not overflow the listen backlog in one burst
    await asyncio.sleep(1.0)
    started = time.monotonic()
    sent, ok, latencies = await normal_clients(url, args.clients, args.slow_seconds)
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*tasks)
    result: dict[str, Any] = {
        "normal_sent": sent,
        "normal_ok": ok,
        "success_rate": ok / sent if sent else 0.0,
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
        "latency_max_ms": max(latencies) if latencies else None,
        "log_bytes_per_s": (child.log_size() - log_before) / (elapsed + 1.0),
    }
    for kind, s in stats.items():
        result[f"{kind}_closed"] = len(s.lifetimes)
        result[f"{kind}_still_open"] = s.still_open
        result[f"{kind}_connect_failed"] = s.failed_to_connect
        result[f"{kind}_lifetime_p50_s"] = statistics.median(s.lifetimes) if s.lifetimes else None
    return result


async def accept_phase(port: int, seconds: float, child: Child) -> dict[str, Any]:
    log_before = child.log_size()
    held = []
    for _ in range(400):
        try:
            held.append(await asyncio.wait_for(asyncio.open_connection(HOST, port), 2))
        except (OSError, TimeoutError):
            break
    started = time.monotonic()
    await asyncio.sleep(seconds)
    grown = child.log_size() - log_before
    elapsed = time.monotonic() - started
    for _, writer in held:
        writer.close()
    return {"held": len(held), "log_bytes_per_s": grown / elapsed, "log_bytes": grown}


# --- the run ----------------------------------------------------------------------------------


def run_mode(phase: str, mode: str, args: argparse.Namespace, tmp: Path, upstream_url: str, run: int) -> dict[str, Any]:
    port = free_port()
    env = clean_env()
    env.update(
        {
            "GEMINI_API_KEY": UPSTREAM_KEY,
            "GEMINI_BASE_URL": upstream_url,
            "IMAGEGATE_API_KEYS": GATEWAY_KEY,
            "IMAGEGATE_DATA_DIR": str(tmp / f"data-{phase}-{mode}-{run}"),
            "IMAGEGATE_HOST": HOST,
            "IMAGEGATE_PORT": str(port),
        }
    )
    label = mode
    if phase == "slow":
        nofile: tuple[int, int | None] = (args.soft_nofile, None)
    else:
        nofile = (args.low_nofile, args.low_nofile)
        if mode == "guarded-over-limit":
            env["IMAGEGATE_MAX_CONNECTIONS"] = "100000"
    child = Child(
        gateway_argv("baseline" if mode == "baseline" else "guarded", port),
        env,
        tmp / f"{phase}-{label}-{run}.log",
        nofile,
    )
    try:
        wait_healthy(child, f"http://{HOST}:{port}/health")
        if phase == "slow":
            result = asyncio.run(slow_phase(port, args, child))
        else:
            result = asyncio.run(accept_phase(port, args.accept_seconds, child))
    finally:
        child.stop()
    result.update({"phase": phase, "mode": label, "run": run})
    print(
        f"  {phase:<6} {label:<18} run {run}: "
        + json.dumps({k: _round(v) for k, v in result.items() if k not in ("phase", "mode", "run")}),
        file=sys.stderr,
    )
    return result


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def summarize(results: list[dict[str, Any]]) -> str:
    """Medians over the repeats, with [min, max]."""

    def cell(rows: list[dict[str, Any]], key: str, fmt: str = "{:.1f}") -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return "-"
        med = statistics.median(values)
        return f"{fmt.format(med)} [{fmt.format(min(values))}, {fmt.format(max(values))}]"

    lines = [
        "| phase | mode | normal success | normal p50 ms | head-drip closed / open, p50 life s "
        "| body-drip closed / open | log B/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, mode in dict.fromkeys((r["phase"], r["mode"]) for r in results):
        rows = [r for r in results if r["phase"] == phase and r["mode"] == mode]
        if phase == "slow":
            lines.append(
                f"| slow | {mode} | {cell(rows, 'success_rate', '{:.0%}')} | {cell(rows, 'latency_p50_ms')} "
                f"| {cell(rows, 'head_closed', '{:.0f}')} / {cell(rows, 'head_still_open', '{:.0f}')}, "
                f"{cell(rows, 'head_lifetime_p50_s')} | {cell(rows, 'body_closed', '{:.0f}')} / "
                f"{cell(rows, 'body_still_open', '{:.0f}')} | {cell(rows, 'log_bytes_per_s', '{:.0f}')} |"
            )
        else:
            lines.append(f"| accept | {mode} | - | - | - | - | {cell(rows, 'log_bytes_per_s', '{:.0f}')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=1100, help="slow connections in the slow phase")
    parser.add_argument("--drip", type=float, default=2.0, help="seconds between dripped bytes")
    parser.add_argument("--clients", type=int, default=2, help="normal clients in the slow phase")
    parser.add_argument("--slow-seconds", type=float, default=13.0)
    parser.add_argument("--accept-seconds", type=float, default=4.0)
    parser.add_argument("--soft-nofile", type=int, default=1024, help="the gateway's soft descriptor limit (slow)")
    parser.add_argument("--low-nofile", type=int, default=128, help="the gateway's descriptor limit (accept)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-data", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the bench itself holds 1,100+ sockets
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="imagegate-slow-bench-"))
    upstream: Child | None = None
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        up_port = free_port()
        upstream = Child(
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
            dict(os.environ),
            tmp / "upstream.log",
        )
        upstream_url = f"http://{HOST}:{up_port}"
        wait_healthy(upstream, f"{upstream_url}/health")
        print(
            f"descriptor limit of this shell: soft {soft}, hard {hard}; load {os.getloadavg()[0]:.2f}", file=sys.stderr
        )
        for run in range(1, args.repeats + 1):
            for mode in ("baseline", "guarded"):
                results.append(run_mode("slow", mode, args, tmp, upstream_url, run))
            for mode in ("baseline", "guarded-over-limit", "guarded"):
                results.append(run_mode("accept", mode, args, tmp, upstream_url, run))
    finally:
        if upstream is not None:
            upstream.stop()
        if args.keep_data:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{args.slow} slow connections (drip every {args.drip:g} s), {args.clients} normal clients for "
        f"{args.slow_seconds:g} s, soft nofile {args.soft_nofile}; accept phase: nofile {args.low_nofile}, "
        f"{args.accept_seconds:g} s; {args.repeats} repeat(s), {time.monotonic() - started:.0f} s in all; "
        f"load {os.getloadavg()[0]:.2f}. Medians [min, max]:\n"
    )
    print(summarize(results))
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
