"""Engine tests run on tiny checkpoints (see tiny_models.py) on the CPU, one torch thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every engine test runs with one torch thread (see the top-level conftest)."""
