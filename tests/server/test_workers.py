"""`imagegate serve --workers N`: workers do not outlive a master killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .serve_process import SRC, ServeProcess

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the worker pids")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may be slow to reap reparented processes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@linux_only
def test_workers_stop_when_the_master_is_killed(tmp_path: Path) -> None:
    # TMPDIR: the master's metrics directory, which a SIGKILLed master cannot remove, stays in tmp_path.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = ServeProcess(tmp_path, env={"TMPDIR": str(scratch)}, args=("--workers", "2"), startup_timeout_s=60)
    workers: list[int] = []
    try:
        server.wait_ready()
        assert _wait_for(lambda: len([p for p in _children(server.process.pid) if _alive(p)]) >= 2, 30)
        workers = [p for p in _children(server.process.pid) if _alive(p)]
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        assert _wait_for(lambda: not _answers(server.url), 5), "orphaned workers still serve the port"
        assert _wait_for(lambda: not any(_alive(p) for p in workers), 5), "orphaned workers still run"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()


def test_the_portable_watchdog_stops_a_process_whose_master_is_gone() -> None:
    """Where PR_SET_PDEATHSIG does not exist, a thread watching the parent pid sends SIGTERM."""
    code = (
        "import os, time; from imagegate.server.serving import watch_master; "
        "watch_master(os.getppid() + 1_000_000); time.sleep(30)"
    )  # a master that is not our parent
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=20, capture_output=True)
    assert done.returncode == -signal.SIGTERM
    assert b"master process" in done.stderr
