"""memory.keep_request_buffers: request-sized buffers are reused, bigger ones still given back.

Each case runs in a fresh interpreter (malloc's thresholds are process-wide and cannot be unset)
and counts the minor page faults of a loop that allocates and frees what a request does: three
3 MB buffers (body chunks, their join, the decoded image). A fault is a page the kernel had to
hand over and zero again, which is what the thresholds exist to avoid.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from imagegate import memory
from imagegate.config import Settings

SRC = Path(__file__).resolve().parents[1] / "src"
PAGE = 4096

FAULTS_PER_CYCLE = """
import resource, sys
from imagegate.memory import keep_request_buffers
keep, size = int(sys.argv[1]), int(sys.argv[2])
print(keep_request_buffers(keep))
def cycle():
    buffers = [b"x" * size for _ in range(3)]
    del buffers
for _ in range(3):
    cycle()  # glibc's dynamic thresholds settle on the first frees
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def faults_per_cycle(keep_bytes: int, buffer_bytes: int) -> tuple[bool, float]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_CYCLE, str(keep_bytes), str(buffer_bytes)],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    applied, faults = done.stdout.split()
    return applied == "True", float(faults)


@glibc_only
def test_request_sized_buffers_are_reused_instead_of_faulted_in_again() -> None:
    applied, kept = faults_per_cycle(memory.DEFAULT_KEEP_BYTES, 3 << 20)
    default_applied, default = faults_per_cycle(0, 3 << 20)
    assert applied and not default_applied
    # glibc's default trims the 9 MB freed at the heap's top every cycle: over 1,000 pages.
    assert default > 1000
    assert kept < default / 50


@glibc_only
def test_buffers_over_the_mmap_threshold_are_still_given_back() -> None:
    """A 4K image's buffers do not stay in the process: each is mapped and unmapped again, so it
    is faulted in every cycle (3 x 12 MB), as under glibc's default."""
    size = memory.MMAP_THRESHOLD_BYTES + (4 << 20)
    applied, faults = faults_per_cycle(memory.DEFAULT_KEEP_BYTES, size)
    assert applied
    assert faults > 0.9 * 3 * size / PAGE


def test_zero_keeps_glibcs_defaults() -> None:
    assert memory.keep_request_buffers(0) is False


def test_other_c_libraries_keep_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    assert memory.keep_request_buffers(memory.DEFAULT_KEEP_BYTES) is False


def test_the_setting_defaults_to_keeping_64_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().malloc_keep_bytes == 64 * 1024 * 1024
    monkeypatch.setenv("IMAGEGATE_MALLOC_KEEP_BYTES", "0")
    assert Settings().malloc_keep_bytes == 0
    monkeypatch.setenv("IMAGEGATE_MALLOC_KEEP_BYTES", "-1")
    with pytest.raises(ValueError):
        Settings()


def test_a_worker_process_sets_the_thresholds_from_its_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from imagegate.server import app

    calls: list[int] = []
    monkeypatch.setattr(memory, "keep_request_buffers", lambda keep: calls.append(keep) or True)
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGEGATE_MALLOC_KEEP_BYTES", "12345678")
    app.app_from_env()
    assert calls == [12345678]


def test_a_single_process_gateway_sets_them_before_it_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from imagegate.server import serving

    events: list[str] = []

    class Server:
        started = True

        def __init__(self, config: object) -> None:
            events.append("built")

        def run(self) -> None:
            events.append("served")

    monkeypatch.setattr(memory, "keep_request_buffers", lambda keep: events.append(f"keep {keep}") or True)
    monkeypatch.setattr(serving.uvicorn, "Server", Server)
    serving.serve(Settings(data_dir=tmp_path, malloc_keep_bytes=7 << 20), log_level="warning")
    assert events == [f"keep {7 << 20}", "built", "served"]
