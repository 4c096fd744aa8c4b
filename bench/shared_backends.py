"""Shared backends: two gateway instances over PostgreSQL, Redis and S3, against one instance on the
embedded defaults, under the same load.

Everything runs on this machine, each in its own process, on loopback and a free port:

  fake upstream  bench/fake_gemini.py: every generateContent answered at once with a ~1.5 MB PNG
  postgres       a fresh cluster (initdb into a temp dir, as the `postgres` user when run as root)
                 with PostgreSQL's default durability (fsync and synchronous_commit on), unlike the
                 tests' throwaway server: this bench measures a real setup
  redis          redis-server without persistence (no RDB snapshots, no AOF)
  moto           moto's S3 server (`python -m moto.server`), a stand-in for S3's wire API
  gateways       `imagegate serve` from this checkout, in three setups:
    embedded     one instance with the defaults (SQLite and results in its data dir, state in-process)
    shared       two instances, each with its own data dir, on IMAGEGATE_DATABASE_URL (after
                 `imagegate migrate`), IMAGEGATE_REDIS_URL and IMAGEGATE_RESULTS_URL=s3://<bucket>/results
                 (IMAGEGATE_S3_ENDPOINT_URL and AWS_* test credentials for moto); this process spreads
                 the requests round-robin over both, a client-side balancer (no proxy hop)
    shared-1     the first of those two alone: the shared backends' cost without the instance count

Each setup has one key made with `imagegate keys create` in its own database, so every request
authenticates through the key store, not IMAGEGATE_API_KEYS. The load generator is the one of
bench/gateway_overhead.py (asyncio + httpx, N workers sharing a fixed number of requests, keep-alive
connections, a warm-up before each measured run); every setup and format runs once per round at
each concurrency, the setups in a rotating order, and the tables give medians over the rounds with
[min, max]. The first answer of each run is checked (the upstream's PNG, or a result URL of the
instance that answered), and one URL per `url` run is fetched through the *other* shared instance
(or the same one for a single instance) and must serve the same bytes. Between runs the results
are deleted (the S3 bucket's objects and the local result files), so neither moto's memory nor the
disk grows over a run.

Which backends a checkout really uses is measured, not assumed: Redis commands per request (from
INFO), S3 objects written per request, the usage ledger's rows in PostgreSQL at the end, and what
each instance's /health/ready (where it exists) reports. A setting the checkout does not honour yet
just measures what is there.

    .venv/bin/python bench/shared_backends.py                # 3 rounds: ~1.5 min on 2 quiet cores, ~3 min busy
    .venv/bin/python bench/shared_backends.py --quick        # smoke run, under a minute
    .venv/bin/python bench/shared_backends.py --json /tmp/shared.json --repeat 5

Standalone like gateway_overhead.py, whose helpers it imports; the gateway is driven over HTTP only.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gateway_overhead import (  # noqa: E402
    DIRECT_BODY,
    HOST,
    MODEL,
    PNG_MAGIC,
    SRC,
    UPSTREAM_KEY,
    UPSTREAM_MODEL,
    Child,
    RunResult,
    clean_env,
    free_port,
    gateway_command,
    median,
    own_cpu_seconds,
    spread,
    start_fake_upstream,
    summarize_run,
    wait_healthy,
)

SETUPS = ("embedded", "shared", "shared-1")
PG_USER = "imagegate"
PG_DATABASE = "imagegate_bench"
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian's layout, newest first
# moto's server checks no signature; boto3 (in the gateway) needs some credentials and a region.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata endpoint for credentials
}
RESULTS_PREFIX = "results"
START_TIMEOUT_S = 60.0
CPU_COLUMNS = ("gateways", "postgres", "redis", "moto", "upstream", "client")
SERVER_CPU = ("gateways", "postgres", "redis", "moto")  # what serves a request, load generator and upstream aside


# --- the backends ----------------------------------------------------------------------------


def _pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"PostgreSQL's {name} is missing: apt-get install -y postgresql")
    return found


def _wait_until(ready: Callable[[], bool], child: Child, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{what} exited with {child.proc.returncode}:\n{child.log_tail()}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S}s:\n{child.log_tail()}")


def start_postgres(root: Path, env: dict[str, str], log: Path) -> tuple[Child, str]:
    """initdb into `root` and start the server there, with PostgreSQL's default durability. It
    refuses to run as root, so as root it runs as the `postgres` user (as tests/backends.py does);
    `root` is then that user's, outside our own 0700 temp dir."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        [*as_postgres, _pg_binary("initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    argv = [
        *as_postgres,
        _pg_binary("postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(root),  # its Unix socket here, not in /var/run/postgresql
        "-c",
        "listen_addresses=127.0.0.1",
    ]
    child = Child("postgres", argv, env, log)
    # Its own Unix socket appears once it listens: the port that answers is ours.
    _wait_until(lambda: (root / f".s.PGSQL.{port}").exists(), child, "postgres")
    import psycopg

    def accepts() -> bool:
        try:
            psycopg.connect(f"postgresql://{PG_USER}@{HOST}:{port}/postgres", connect_timeout=2).close()
            return True
        except psycopg.Error:
            return False

    _wait_until(accepts, child, "postgres")
    with psycopg.connect(f"postgresql://{PG_USER}@{HOST}:{port}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    return child, f"postgresql://{PG_USER}@{HOST}:{port}/{PG_DATABASE}"


def start_redis(env: dict[str, str], log: Path) -> tuple[Child, str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    child = Child("redis", argv, env, log)

    def ours() -> bool:  # answers, and is the process we started
        client = redis.Redis(host=HOST, port=port, socket_timeout=0.5)
        try:
            return int(client.info("server")["process_id"]) == child.proc.pid
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    _wait_until(ours, child, "redis-server")
    return child, f"redis://{HOST}:{port}/0"


def start_moto(env: dict[str, str], log: Path) -> tuple[Child, str]:
    port = free_port()
    child = Child("moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], env, log)
    endpoint = f"http://{HOST}:{port}"
    wait_healthy(child, f"{endpoint}/", START_TIMEOUT_S)  # S3's ListBuckets
    return child, endpoint


class Bucket:
    """The bench's bucket on moto: counted and emptied between runs, deleted at the end."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.name = "imagegate-bench-" + secrets.token_hex(4)
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        self.client.create_bucket(Bucket=self.name)

    def count(self) -> int:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sum(page.get("KeyCount", 0) for page in pages)

    def empty(self) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.name, Delete={"Objects": keys, "Quiet": True})

    def delete(self) -> None:
        self.empty()
        self.client.delete_bucket(Bucket=self.name)


# --- the gateways ----------------------------------------------------------------------------


@dataclass
class Instance:
    name: str
    child: Child
    url: str
    data_dir: Path
    health: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    name: str
    instances: list[Instance]
    key: str
    sent: int = 0  # successful POSTs (warm-ups included): what the usage ledger should hold

    def cpu_seconds(self) -> float:
        return sum(instance.child.cpu_seconds() for instance in self.instances)


def gateway_env(
    base: dict[str, str], src: Path, data_dir: Path, upstream_url: str, backends: dict[str, str]
) -> dict[str, str]:
    return {
        **base,
        "PYTHONPATH": str(src),  # this checkout's code (or --src) first, ahead of the venv's install
        "GEMINI_API_KEY": UPSTREAM_KEY,
        "GEMINI_BASE_URL": upstream_url,
        "IMAGEGATE_DATA_DIR": str(data_dir),
        **backends,
    }


def imagegate(env: dict[str, str], *args: str) -> str:
    """Run an `imagegate` command (migrate, keys create); its stdout."""
    done = subprocess.run([*gateway_command(), *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"imagegate {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def start_instance(name: str, env: dict[str, str], tmp: Path, log_level: str) -> Instance:
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [*gateway_command(), "serve", "--host", HOST, "--port", str(port), "--log-level", log_level]
    child = Child(name, argv, {**env, "IMAGEGATE_PUBLIC_URL": url}, tmp / f"{name}.log")
    return Instance(name, child, url, Path(env["IMAGEGATE_DATA_DIR"]))


def wait_instance(instance: Instance) -> None:
    def gemini_configured(body: Any) -> None:
        if "gemini" not in body.get("providers", []):
            raise RuntimeError(f"{instance.name} /health does not list gemini: {body}")

    wait_healthy(instance.child, f"{instance.url}/health", START_TIMEOUT_S, gemini_configured)
    ready = httpx.get(f"{instance.url}/health/ready", timeout=10.0)
    if ready.status_code in (200, 503) and ready.headers.get("content-type", "").startswith("application/json"):
        instance.health = {"ready": ready.status_code, **ready.json()}
    else:
        instance.health = {"ready": f"no /health/ready in this checkout (HTTP {ready.status_code})"}


def delete_local_results(instances: list[Instance]) -> None:
    """The result files of the run just measured (outside the timed part): the disk stays flat."""
    for instance in instances:
        results = instance.data_dir / "results"
        if results.is_dir():
            for path in results.iterdir():
                if path.is_file():
                    path.unlink(missing_ok=True)


# --- load ------------------------------------------------------------------------------------


async def drive(
    client: httpx.AsyncClient,
    urls: list[str],
    payload: bytes,
    headers: dict[str, str],
    total: int,
    concurrency: int,
    first_check: Callable[[httpx.Response, int], None] | None = None,
) -> tuple[list[float], list[str], float]:
    """gateway_overhead.drive, with the requests spread round-robin over `urls` (one counter for
    all workers, like a balancer); `first_check(response, index of the url)` sees the first answer."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0

    async def worker() -> None:
        nonlocal issued, first_check
        while issued < total:
            index = issued % len(urls)
            issued += 1
            t0 = time.perf_counter()
            response = await client.post(urls[index], content=payload, headers=headers)
            elapsed = time.perf_counter() - t0
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:300]}")
                continue
            latencies.append(elapsed)
            if first_check is not None:
                check, first_check = first_check, None
                check(response, index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


class RedisCommands:
    """Commands Redis has processed (INFO stats), over one connection of ours opened once (a new
    connection would add redis-py's handshake commands). An INFO is counted once it has run, so
    between two readings exactly one of ours is in the difference."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)

    def total(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    def close(self) -> None:
        self.client.close()


@dataclass
class Run:
    """One measured run and what it left in the backends."""

    result: RunResult
    redis_commands_per_request: float  # in the measured part
    sent: int  # answers of the run, its warm-up included
    s3_objects: int = 0  # objects in the bucket after the run (so also the warm-up's)
    url_check: str | None = None
    idle_cpu_ms_per_s: float | None = None  # CPU of each instance the run did not drive, per second

    def server_cpu_ms(self) -> float:
        """CPU per request of everything serving it: the setup's gateways and the backends."""
        return sum(self.result.cpu_ms_per_request.get(name, 0.0) for name in SERVER_CPU)

    def s3_objects_per_request(self) -> float:
        return self.s3_objects / self.sent if self.sent else 0.0


async def measure(
    setup: Setup,
    fmt: str,
    total: int,
    warmup: int,
    concurrency: int,
    cpu_sources: dict[str, Callable[[], float]],
    redis: RedisCommands,
    check: Callable[[httpx.Response, int], None],
    round_no: int,
) -> Run:
    urls = [f"{instance.url}/v1/images/generations" for instance in setup.instances]
    payload = json.dumps({"model": MODEL, "prompt": "bench", "response_format": fmt}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {setup.key}"}
    # A keep-alive pool per instance: with one shared pool of `concurrency` connections, requests
    # alternating between two hosts would open a new connection nearly every time.
    size = concurrency * len(urls)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:
        warm, warm_errors, _ = await drive(client, urls, payload, headers, max(warmup, size), concurrency, check)
        if warm_errors:
            raise RuntimeError(f"{setup.name}/{fmt} warm-up failed: {warm_errors[0]}")
        commands_before = redis.total()
        cpu_before = {name: fn() for name, fn in cpu_sources.items()}
        latencies, errors, wall = await drive(client, urls, payload, headers, total, concurrency)
        cpu_after = {name: fn() for name, fn in cpu_sources.items()}
        commands = redis.total() - commands_before - 1  # our first INFO
    sent = len(warm) + len(latencies)
    setup.sent += sent
    result = summarize_run(setup.name, fmt, concurrency, round_no, latencies, errors, wall, 0, cpu_before, cpu_after)
    return Run(result, round(commands / max(len(latencies), 1), 2), sent)


class Checks:
    """The first answer of each run must be the upstream's PNG (b64_json) or a result URL of the
    instance that answered (url); each url run leaves one URL to fetch through another instance."""

    def __init__(self, png: bytes) -> None:
        self.png = png
        self.made: tuple[int, str] | None = None  # (instance index, url) of the last url run

    def first(self, setup: Setup, fmt: str) -> Callable[[httpx.Response, int], None]:
        self.made = None

        def check(response: httpx.Response, index: int) -> None:
            item = response.json()["data"][0]
            if fmt == "b64_json":
                if base64.b64decode(item["b64_json"]) != self.png:
                    raise AssertionError(f"{setup.name}: b64_json is not the upstream's PNG")
                return
            url, base = item.get("url"), setup.instances[index].url
            if not (isinstance(url, str) and url.startswith(f"{base}/v1/results/")):
                raise AssertionError(f"{setup.name}: unexpected url result: {item!r}"[:300])
            self.made = (index, url)

        return check

    def fetch_elsewhere(self, setup: Setup, stored_in_s3: bool) -> tuple[str, bool]:
        """Fetch the run's URL through the next instance (the same one when there is one): a line
        saying what happened, and whether it is a failure. Through the other instance, a miss is only
        a failure when the results went to S3 (otherwise each instance has its own directory)."""
        assert self.made is not None, "no url answer was checked"
        index, url = self.made
        maker, server = setup.instances[index], setup.instances[(index + 1) % len(setup.instances)]
        response = httpx.get(server.url + url[len(maker.url) :], timeout=30.0)
        ok = response.status_code == 200 and response.content == self.png
        where = f"made by {maker.name}, fetched from {server.name}"
        if ok and maker is not server and not stored_in_s3:
            # The result's row is in the shared database and its file in the maker's data dir, which
            # the other instance can open only because both run on this machine.
            return f"{where}: the upstream's PNG, read from {maker.name}'s data dir (results not in S3)", False
        if ok:
            return f"{where}: the upstream's PNG", False
        detail = f"{where}: HTTP {response.status_code}, {len(response.content)} bytes"
        if maker is not server and not stored_in_s3:
            return f"{detail} (results not in S3: each instance serves only its own)", False
        return f"{detail}, NOT the upstream's PNG", True


async def upstream_png(upstream_url: str) -> bytes:
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            f"{upstream_url}/v1beta/models/{UPSTREAM_MODEL}:generateContent",
            json=DIRECT_BODY,
            headers={"x-goog-api-key": UPSTREAM_KEY},
        )
    response.raise_for_status()
    parts = response.json()["candidates"][0]["content"]["parts"]
    png = base64.b64decode(next(p["inlineData"]["data"] for p in parts if "inlineData" in p))
    if not png.startswith(PNG_MAGIC):
        raise AssertionError("the fake upstream's image is not a PNG")
    return png


async def run_all(
    args: argparse.Namespace,
    setups: list[Setup],
    shared_cpu: dict[str, Callable[[], float]],
    redis: RedisCommands,
    bucket: Bucket,
    checks: Checks,
) -> tuple[list[Run], int]:
    runs: list[Run] = []
    failures = 0
    everyone = {i.name: i for setup in setups for i in setup.instances}
    for round_no in range(args.repeat):
        order = setups[round_no % len(setups) :] + setups[: round_no % len(setups)]  # rotates by round
        for concurrency, total in zip(args.concurrency, args.requests, strict=True):
            for fmt in args.formats:
                for setup in order:
                    label = f"{setup.name}/{fmt}"
                    print(
                        f"  [{round_no + 1}/{args.repeat}] {label:<18} clients={concurrency:<3} requests={total} ...",
                        end="",
                        flush=True,
                        file=sys.stderr,
                    )
                    driven = {i.name for i in setup.instances}
                    idle = [i for i in everyone.values() if i.name not in driven]
                    cpu = {
                        "gateways": setup.cpu_seconds,
                        **shared_cpu,
                        "idle": lambda idle=idle: sum(i.child.cpu_seconds() for i in idle),
                    }
                    check = checks.first(setup, fmt)
                    run = await measure(setup, fmt, total, args.warmup, concurrency, cpu, redis, check, round_no)
                    result = run.result
                    if idle and result.wall_s:  # what an instance spends while nobody calls it (its timers)
                        spent = result.cpu_ms_per_request.pop("idle") * result.requests
                        run.idle_cpu_ms_per_s = round(spent / result.wall_s / len(idle), 2)
                    result.cpu_ms_per_request.pop("idle", None)
                    run.s3_objects = objects = bucket.count()
                    if fmt == "url":
                        run.url_check, failed = checks.fetch_elsewhere(setup, stored_in_s3=objects > 0)
                        failures += failed
                    bucket.empty()  # moto keeps objects in memory
                    delete_local_results(setup.instances)
                    failures += result.errors
                    runs.append(run)
                    print(
                        f" {result.throughput_rps:7.1f} req/s  p50 {result.p50_ms:7.1f} ms"
                        f"  redis {run.redis_commands_per_request:.1f} cmd/req  s3 {objects} objects",
                        file=sys.stderr,
                    )
                    if run.url_check:
                        print(f"      url {run.url_check}", file=sys.stderr)
    return runs, failures


# --- reporting -------------------------------------------------------------------------------

Key = tuple[str, str, int]  # (setup, response_format, concurrency)


def grouped(runs: list[Run]) -> dict[Key, list[Run]]:
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        r = run.result
        groups.setdefault((r.target, r.response_format or "", r.concurrency), []).append(run)
    return groups


def markdown_table(runs: list[Run]) -> str:
    header = (
        "| setup | response_format | clients | rounds x requests | req/s | p50 ms | p95 ms "
        "| CPU ms/req gateways / postgres / redis / moto / upstream / client | server CPU ms/req "
        "| Redis cmd/req | S3 objects/req |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    groups = grouped(runs)
    for (name, fmt, conc), group in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], SETUPS.index(kv[0][0]))):
        results = [run.result for run in group]
        cpu = " / ".join(
            f"{median([r.cpu_ms_per_request.get(column, float('nan')) for r in results]):.1f}" for column in CPU_COLUMNS
        )
        errors = sum(r.errors for r in results)
        lines.append(
            f"| {name} | {fmt} | {conc} | {len(group)} x {results[0].requests}"
            f"{f' ({errors} err)' if errors else ''} | {spread([r.throughput_rps for r in results])} "
            f"| {spread([r.p50_ms for r in results])} | {spread([r.p95_ms for r in results])} | {cpu} "
            f"| {spread([run.server_cpu_ms() for run in group])} "
            f"| {median([run.redis_commands_per_request for run in group]):.1f} "
            f"| {median([run.s3_objects_per_request() for run in group]):.2f} |"
        )
    return "\n".join(lines)


def comparisons(runs: list[Run], formats: list[str], concurrency: list[int]) -> list[dict[str, Any]]:
    """Per format and shared setup, against embedded in the same round: the p50 latency added at
    the lowest concurrency, and the throughput and gateway-CPU-per-request ratios at the highest."""
    by_round = {(r.target, r.response_format, r.concurrency, r.round): r for r in (run.result for run in runs)}
    rounds = sorted({r.round for r in by_round.values()})
    low, high = min(concurrency), max(concurrency)
    rows = []
    for fmt in formats:
        for name in ("shared", "shared-1"):
            added, ratio, cpu = [], [], []
            for rnd in rounds:
                base, mine = by_round.get(("embedded", fmt, low, rnd)), by_round.get((name, fmt, low, rnd))
                if base and mine:
                    added.append(round(mine.p50_ms - base.p50_ms, 2))
                base, mine = by_round.get(("embedded", fmt, high, rnd)), by_round.get((name, fmt, high, rnd))
                if base and mine and base.throughput_rps:
                    ratio.append(round(mine.throughput_rps / base.throughput_rps, 3))
                    mine_cpu, base_cpu = mine.cpu_ms_per_request["gateways"], base.cpu_ms_per_request["gateways"]
                    if base_cpu:
                        cpu.append(round(mine_cpu / base_cpu, 3))
            if added or ratio:
                rows.append(
                    {
                        "response_format": fmt,
                        "setup": name,
                        f"added_p50_ms_at_{low}": added,
                        f"throughput_ratio_at_{high}": ratio,
                        f"gateway_cpu_ratio_at_{high}": cpu,
                    }
                )
    return rows


def comparison_table(rows: list[dict[str, Any]], low: int, high: int) -> str:
    header = (
        f"| response_format | setup | added p50 ms at {low} client{'s' if low > 1 else ''} (vs embedded) "
        f"| req/s ratio at {high} clients (vs embedded) | gateway CPU per req ratio at {high} clients |"
    )
    lines = [header, "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['response_format']} | {row['setup']} | {spread(row[f'added_p50_ms_at_{low}'], '{:+.1f}')} "
            f"| {spread(row[f'throughput_ratio_at_{high}'], '{:.2f}')} "
            f"| {spread(row[f'gateway_cpu_ratio_at_{high}'], '{:.2f}')} |"
        )
    return "\n".join(lines)


def summary(runs: list[Run], rows: list[dict[str, Any]], low: int, high: int) -> list[str]:
    """The closing note per format: the throughputs at the highest concurrency (medians, and the
    same-round ratios to embedded), the p50 latency the shared backends add at the lowest, and the
    server-side CPU per request (the steadiest figure on a shared machine)."""
    groups = grouped(runs)
    lines = []
    for fmt in sorted({run.result.response_format or "" for run in runs}):
        mine = {row["setup"]: row for row in rows if row["response_format"] == fmt}
        present = [name for name in SETUPS if (name, fmt, high) in groups]
        rps = ", ".join(
            f"{name} {median([run.result.throughput_rps for run in groups[(name, fmt, high)]]):.1f}" for name in present
        )
        line = f"{fmt}: req/s at {high} clients {rps}"
        if mine:
            ratios = ", ".join(
                f"{name} {spread(row[f'throughput_ratio_at_{high}'], '{:.2f}')}" for name, row in mine.items()
            )
            added = ", ".join(
                f"{name} {spread(row[f'added_p50_ms_at_{low}'], '{:+.1f}')}" for name, row in mine.items()
            )
            line += f" (same-round ratio to embedded: {ratios}); added p50 at {low} client{'s' if low > 1 else ''}: {added} ms"
        cpu = ", ".join(
            f"{name} {median([run.server_cpu_ms() for run in groups[(name, fmt, high)]]):.1f}" for name in present
        )
        lines.append(f"{line}; server-side CPU ms/req (gateways + PostgreSQL + Redis + moto) at {high} clients: {cpu}")
    return lines


def ledger_rows(database_url: str) -> int | None:
    """Usage rows in PostgreSQL (None when the table is not there)."""
    import psycopg

    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM usage").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 32],
        metavar="N",
        help="concurrent clients per run (default: 1 32); the added latency is read at the lowest, "
        "the throughput ratio at the highest",
    )
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="measured requests per run, one per --concurrency value or one for all (default: 200 at 1 client, 400 above)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up requests per run (default 10, at least the connections)"
    )
    parser.add_argument("--formats", nargs="+", default=["b64_json", "url"], choices=["b64_json", "url"])
    parser.add_argument(
        "--setups", nargs="+", default=list(SETUPS), choices=SETUPS, help="which setups (default all three)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="rounds, interleaved (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 20 / 64 requests, 4 warm-up")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--gateway-log-level", default="warning", help="`imagegate serve --log-level` (default warning)"
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=SRC,
        metavar="DIR",
        help="run the gateways from this source tree (a checkout or its src/; default this checkout's), same venv",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temp dirs (logs, data dirs, the cluster)")
    args = parser.parse_args(argv)
    if "embedded" not in args.setups:
        parser.error("--setups: the comparisons are against embedded; keep it")
    if args.requests is None:
        args.requests = [(20 if c == 1 else 64) if args.quick else (200 if c == 1 else 400) for c in args.concurrency]
    elif len(args.requests) == 1:
        args.requests = args.requests * len(args.concurrency)
    elif len(args.requests) != len(args.concurrency):
        parser.error("--requests takes one value, or one per --concurrency value")
    if args.warmup is None:
        args.warmup = 4 if args.quick else 10
    src = args.src.resolve()
    args.src = src / "src" if (src / "src" / "imagegate").is_dir() else src
    if not (args.src / "imagegate").is_dir():
        parser.error(f"--src: no imagegate package under {src}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a CI timeout unwinds through the finally below
    children: list[Child] = []
    tmp = Path(tempfile.mkdtemp(prefix="imagegate-bench-shared-"))
    pg_root = Path(tempfile.mkdtemp(prefix="imagegate-bench-pg-"))  # the postgres user's, when we are root
    bucket: Bucket | None = None

    def cleanup() -> None:
        for child in reversed(children):
            child.stop()
        children.clear()
        if not args.keep_data:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(pg_root, ignore_errors=True)

    atexit.register(cleanup)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        base = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")} | AWS_ENV
        upstream, upstream_url = start_fake_upstream(base, tmp / "upstream.log")
        children.append(upstream)
        postgres, database_url = start_postgres(pg_root, base, tmp / "postgres.log")
        children.append(postgres)
        redis_child, redis_url = start_redis(base, tmp / "redis.log")
        children.append(redis_child)
        moto, s3_endpoint = start_moto(base, tmp / "moto.log")
        children.append(moto)
        bucket = Bucket(s3_endpoint)
        wait_healthy(upstream, f"{upstream_url}/health", START_TIMEOUT_S)
        shared_backends = {
            "IMAGEGATE_DATABASE_URL": database_url,
            "IMAGEGATE_REDIS_URL": redis_url,
            "IMAGEGATE_RESULTS_URL": f"s3://{bucket.name}/{RESULTS_PREFIX}",
            "IMAGEGATE_S3_ENDPOINT_URL": s3_endpoint,
        }

        # Keys first (each setup's own database), then the instances, all starting at once.
        embedded_env = gateway_env(base, args.src, tmp / "data-embedded", upstream_url, {})
        embedded_key = imagegate(embedded_env, "keys", "create", "bench").strip()
        shared_envs = [
            gateway_env(base, args.src, tmp / f"data-shared-{i}", upstream_url, shared_backends) for i in "ab"
        ]
        imagegate(shared_envs[0], "migrate")
        shared_key = imagegate(shared_envs[0], "keys", "create", "bench").strip()
        wanted = set(args.setups)
        embedded = start_instance("embedded", embedded_env, tmp, args.gateway_log_level)
        count = 2 if "shared" in wanted else 1 if "shared-1" in wanted else 0  # shared-1 alone: the first
        shared = [
            start_instance(f"shared-{i}", env, tmp, args.gateway_log_level)
            for i, env in zip("ab"[:count], shared_envs, strict=False)
        ]
        instances = [embedded, *shared]
        children += [instance.child for instance in instances]
        for instance in instances:
            wait_instance(instance)
        setups = [Setup("embedded", [embedded], embedded_key)]
        if "shared" in wanted:
            setups.append(Setup("shared", shared, shared_key))
        if "shared-1" in wanted:
            setups.append(Setup("shared-1", shared[:1], shared_key))
        print(
            f"fake upstream {upstream_url}; postgres {database_url}; redis {redis_url}; moto S3 {s3_endpoint} "
            f"(bucket {bucket.name}); "
            + "; ".join(f"{i.name} {i.url} (pid {i.child.proc.pid})" for i in instances)
            + f"; data in {tmp}",
            file=sys.stderr,
        )

        png = asyncio.run(upstream_png(upstream_url))
        checks = Checks(png)
        shared_cpu: dict[str, Callable[[], float]] = {
            "postgres": postgres.cpu_seconds,
            "redis": redis_child.cpu_seconds,
            "moto": moto.cpu_seconds,
            "upstream": upstream.cpu_seconds,
            "client": own_cpu_seconds,
        }
        redis = RedisCommands(redis_url)
        try:
            runs, failures = asyncio.run(run_all(args, setups, shared_cpu, redis, bucket, checks))
        finally:
            redis.close()

        # Stop the shared instances first (gracefully: their usage writers flush), then count the
        # usage ledger in PostgreSQL against what they answered.
        for instance in shared:
            instance.child.stop()
        sent_shared = sum(setup.sent for setup in setups if setup.name != "embedded")
        rows_in_pg = ledger_rows(database_url)
        low, high = min(args.concurrency), max(args.concurrency)
        rows = comparisons(runs, args.formats, args.concurrency)
        notes = summary(runs, rows, low, high)
        load_after = os.getloadavg()[0]
        redis_per_request = median([run.redis_commands_per_request for run in runs if run.result.target != "embedded"])
        s3_objects = sum(run.s3_objects for run in runs if run.result.target != "embedded")
        idle_cpu = [run.idle_cpu_ms_per_s for run in runs if run.idle_cpu_ms_per_s is not None]
        backends = {
            "health_ready": {instance.name: instance.health for instance in instances},
            "postgres_usage_rows": rows_in_pg,
            "shared_requests_answered": sent_shared,
            "redis_commands_per_shared_request": redis_per_request,
            "s3_objects_written_by_shared": s3_objects,
            "idle_instance_cpu_ms_per_s": idle_cpu,
            "url_checks": [
                f"{run.result.target} {run.result.concurrency} clients, round {run.result.round + 1}: {run.url_check}"
                for run in runs
                if run.url_check
            ],
        }

        print()
        print(
            f"Fake upstream PNG: {len(png)} bytes; {platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs shared by the load generator, the gateways and every backend; load average "
            f"before/after {load_before:.2f}/{load_after:.2f}; {time.perf_counter() - started:.0f}s total, "
            f"{args.repeat} round(s); gateway: {args.src}"
        )
        print(
            "PostgreSQL at its default durability (fsync, synchronous_commit on); Redis without persistence; "
            "moto's S3 server. `shared` is two instances behind a client-side round-robin, `shared-1` the first "
            "alone. CPU ms/req: user+system CPU per measured request of each process tree (gateways: the setup's "
            "own instances); server CPU: gateways + postgres + redis + moto. Medians over rounds, [min, max] when "
            "repeated."
        )
        print()
        print(markdown_table(runs))
        print()
        print("Against embedded, runs of the same round (median [min, max]):")
        print()
        print(comparison_table(rows, low, high))
        print()
        for line in notes:
            print(f"- {line}")
        print(
            f"- Backends in use: PostgreSQL usage rows {rows_in_pg} for {sent_shared} answers of the shared "
            f"instances; Redis {redis_per_request:.1f} commands per shared request; {s3_objects} S3 objects "
            f"written by the shared instances. An instance not driven in a run spent "
            f"{spread(idle_cpu, '{:.1f}')} ms of CPU per second."
        )
        for instance in instances:
            print(f"- {instance.name} /health/ready: {json.dumps(instance.health)}")
        for line in backends["url_checks"]:
            print(f"- url check: {line}")
        if args.json:
            doc = {
                "benchmark": "shared_backends",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(load_after, 2),
                },
                "config": {
                    "concurrency": args.concurrency,
                    "requests": args.requests,
                    "warmup": args.warmup,
                    "formats": args.formats,
                    "setups": args.setups,
                    "repeat": args.repeat,
                    "gateway_src": str(args.src),
                    "png_bytes": len(png),
                    "model": MODEL,
                    "postgres": "default durability",
                    "balancer": "client-side round-robin",
                },
                "results": [
                    {
                        **asdict(run.result),
                        "server_cpu_ms_per_request": round(run.server_cpu_ms(), 2),
                        "redis_commands_per_request": run.redis_commands_per_request,
                        "answers_with_warmup": run.sent,
                        "s3_objects": run.s3_objects,
                        "url_check": run.url_check,
                        "idle_instance_cpu_ms_per_s": run.idle_cpu_ms_per_s,
                    }
                    for run in runs
                ],
                "comparisons": rows,
                "summary": notes,
                "backends": backends,
            }
            for item in doc["results"]:
                item["setup"] = item.pop("target")
                item.pop("vs_direct", None)  # gateway_overhead's columns, not measured here
                item.pop("response_bytes", None)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"\nJSON results: {args.json}", file=sys.stderr)
        if failures:
            print(
                f"\n{failures} failures; log tails:\n" + "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in children),
                file=sys.stderr,
            )
        return 1 if failures else 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if bucket is not None:
            try:
                bucket.delete()
            except Exception as exc:  # moto already gone: its memory went with it
                print(f"bucket cleanup: {exc}", file=sys.stderr)
        cleanup()
        if args.keep_data:
            print(f"kept {tmp} and {pg_root}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
