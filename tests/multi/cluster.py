"""Several `imagegate serve` instances over the shared backends, as a deployment runs them: each
its own process and data dir, all on one PostgreSQL database, one Redis and one S3 bucket (the real
servers of tests/backends.py), all calling the same fake Gemini upstream.

The tests talk to each instance directly (no balancer): that is what proves any instance answers
what another made.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from openai import OpenAI

from imagegate import db as dbm

from ..server.serve_process import ServeProcess

API_KEY = "sk-multi-user"
ADMIN_KEY = "sk-multi-admin"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(3, 35))).decode()


@dataclass
class Cluster:
    tmp_path: Path
    env: dict[str, str]
    database_url: str
    instances: list[ServeProcess] = field(default_factory=list)

    def start(self, count: int) -> None:
        for _ in range(count):
            self.instances.append(self._launch(len(self.instances)))
        for instance in self.instances:
            instance.wait_ready()

    def _launch(self, index: int) -> ServeProcess:
        env = {**self.env, "IMAGEGATE_DATA_DIR": str(self.tmp_path / f"instance-{index}")}
        instance = ServeProcess(self.tmp_path, env=env, startup_timeout_s=60)
        return instance

    def url(self, index: int) -> str:
        return self.instances[index].url

    def client(self, index: int, api_key: str = API_KEY, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url(index)}/v1", api_key=api_key, max_retries=0, **kwargs)

    def http(self, index: int, api_key: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url(index), headers={"Authorization": f"Bearer {api_key}"}, timeout=60.0)

    def kill(self, index: int) -> None:
        """SIGKILL: nothing of the instance's shutdown runs (no flush, no cleanup)."""
        process = self.instances[index].process
        process.kill()
        process.wait(10)

    def restart(self, index: int) -> None:
        """The instance again, on the same data dir (a supervisor restarting it on its volume)."""
        self.instances[index].stop()
        self.instances[index] = self._launch(index)
        self.instances[index].wait_ready()

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def logs(self) -> str:
        return "\n".join(f"--- instance {i}\n{inst.log()[-4000:]}" for i, inst in enumerate(self.instances))

    def stop(self) -> None:
        for instance in self.instances:
            with contextlib.suppress(Exception):
                instance.stop()


def cluster_env(
    database_url: str, redis_url: str, s3_env: dict[str, str], bucket: str, gemini_key: str, gemini_url: str
) -> dict[str, str]:
    return {
        "IMAGEGATE_DATABASE_URL": database_url,
        "IMAGEGATE_REDIS_URL": redis_url,
        "IMAGEGATE_RESULTS_URL": f"s3://{bucket}/results",
        **s3_env,
        "IMAGEGATE_API_KEYS": API_KEY,
        "IMAGEGATE_ADMIN_KEYS": ADMIN_KEY,
        "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
        "IMAGEGATE_RETRY_ATTEMPTS": "1",
        "IMAGEGATE_JOB_HEARTBEAT_STALE_SECONDS": "3",
        "IMAGEGATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "IMAGEGATE_WEBHOOK_BASE_DELAY_SECONDS": "0.05",
        "GEMINI_API_KEY": gemini_key,
        "GEMINI_BASE_URL": gemini_url,
    }


@contextlib.contextmanager
def running_cluster(tmp_path: Path, env: dict[str, str], database_url: str, count: int = 2) -> Iterator[Cluster]:
    dbm.migrate(database_url)
    cluster = Cluster(tmp_path, env, database_url)
    try:
        cluster.start(count)
        yield cluster
    finally:
        cluster.stop()
