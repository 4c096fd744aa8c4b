"""The code is formatted, linted and type-checked as the project's rules say, in every CI run
(ruff and mypy come with the `test` extra, pinned so that a new release cannot fail a clean tree)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ["src", "tests", "bench", "examples"]


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("ruff format", ("ruff", "format", "--check", *TREES)),
        ("ruff check", ("ruff", "check", *TREES)),
        ("mypy --strict", ("mypy",)),
    ],
    ids=["ruff-format", "ruff-check", "mypy"],
)
def test_the_tree_is_clean(name: str, args: tuple[str, ...]) -> None:
    result = run_tool(*args)
    assert result.returncode == 0, f"{name} found problems:\n{result.stdout}\n{result.stderr}"
