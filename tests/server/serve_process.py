"""`imagegate serve` as a real subprocess on a free loopback port, for what needs a process of its
own: descriptor limits, workers, signals. Everything it starts is stopped by `stop()`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

import imagegate

SRC = str(Path(imagegate.__file__).resolve().parents[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _limit_descriptors(soft: int, hard: int | None) -> Any:
    def apply() -> None:
        import resource

        current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, current_hard if hard is None else hard))

    return apply


class ServeProcess:
    """`with ServeProcess(tmp_path, env={...}, args=[...]) as srv: srv.url`; stderr goes to
    `srv.log_path`. `nofile=(soft, hard)` sets RLIMIT_NOFILE in the child (hard None: unchanged)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        nofile: tuple[int, int | None] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        full_env = dict(os.environ)  # the tests' environment is already clean (conftest.clean_environ)
        full_env.update(
            {
                "PYTHONPATH": os.pathsep.join([SRC, full_env.get("PYTHONPATH", "")]),
                "IMAGEGATE_DATA_DIR": str(tmp_path / f"data-{self.port}"),
            }
        )
        full_env.update(env or {})
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagegate", "serve", "--port", str(self.port), *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_descriptors(*nofile) if nofile else None,
        )
        self.startup_timeout_s = startup_timeout_s

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"imagegate serve exited ({self.process.returncode}): {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"imagegate serve did not start: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def __enter__(self) -> ServeProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
