"""Real shared backends on loopback for the tests: PostgreSQL and Redis from Debian's packages, and
moto's S3 server (a stand-in for S3's wire API), each started once per test session.

Each test gets its own PostgreSQL database, its own Redis database number (flushed first) and its
own S3 bucket, so tests never see each other's rows, keys or objects. Everything the servers
write lives in a temporary directory deleted when the session ends.

The binaries are required, not optional: `.ci/run` installs them (`apt-get install postgresql
redis-server`; moto comes with the test extra). A missing one fails the test with the command to
install it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # newest first
START_TIMEOUT_SECONDS = 30.0
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_SECONDS} s")


def _pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is missing: apt-get install -y postgresql")
    return found


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    port: int
    root: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://imagegate@127.0.0.1:{self.port}/{database}"

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_postgres() -> PostgresServer:
    root = Path(tempfile.mkdtemp(prefix="imagegate-pg-"))
    data = root / "data"
    prefix = _as_postgres_user()
    if prefix:
        shutil.chown(root, "postgres")
    subprocess.run(
        [*prefix, _pg_binary("initdb"), "-D", str(data), "-U", "imagegate", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    for _ in range(START_ATTEMPTS):  # a port taken between free_port() and the bind: another port
        port = free_port()
        # Durability off: a test database that loses its last commits to a power cut costs nothing.
        settings = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        process = subprocess.Popen(
            [
                *prefix,
                _pg_binary("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                *settings,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Its own Unix socket appears once it listens: proof that the port answering is ours.
        if _wait_for(lambda p=port: (root / f".s.PGSQL.{p}").exists(), process):
            server = PostgresServer(port, root, process)
            _wait_for(server.accepts_connections, process)  # past "the database system is starting up"
            return server
    raise RuntimeError(f"postgres did not start in {START_ATTEMPTS} attempts")


def _wait_for(ready: Callable[[], bool], process: subprocess.Popen[bytes]) -> bool:
    """True once `ready()`; False if the process exits first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    raise RuntimeError(f"{process.args!r} did not get ready within {START_TIMEOUT_SECONDS} s")


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: apt-get install -y redis-server")
    for _ in range(START_ATTEMPTS):
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                "64",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_for(lambda p=port, pid=process.pid: _redis_pid(p) == pid, process):  # ours, not another run's
            return RedisServer(port, process)
    raise RuntimeError(f"redis-server did not start in {START_ATTEMPTS} attempts")


def _redis_pid(port: int) -> int | None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# moto's server checks no signature; any credentials do, but boto3 needs some.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3() -> S3Server:
    for _ in range(START_ATTEMPTS):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **S3_ENV},
        )
        _wait_for_port(port, process, "moto S3 server")
        time.sleep(0.2)
        if process.poll() is None:  # still running: the port it answered on is its own
            return S3Server(port, process)
    raise RuntimeError(f"moto's S3 server did not start in {START_ATTEMPTS} attempts")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test, dropped after it."""
    name = "t_" + secrets.token_hex(6)
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


_redis_db_counter = iter(range(1, 1_000_000))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of its own (numbers 1 to 63 in turn), empty when the test starts."""
    import redis

    url = redis_server.url(next(_redis_db_counter) % 63 + 1)
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS_* variables for the moto server, set for this test, and its endpoint."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    return {**S3_ENV, "IMAGEGATE_S3_ENDPOINT_URL": s3_server.endpoint_url}


@pytest.fixture
def s3_bucket(s3_server: S3Server, s3_env: dict[str, str]) -> Iterator[str]:
    """An empty bucket of its own on the moto server, removed with its objects after the test."""
    import boto3

    name = "ig-" + secrets.token_hex(6)
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
