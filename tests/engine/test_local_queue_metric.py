"""The local provider reports its engines' queues (imagegate_local_engine_queued_images)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("torch")

from imagegate.metrics import StateCollector, exposition  # noqa: E402
from imagegate.providers.local import LocalProvider  # noqa: E402
from imagegate.resilience import CircuitBreaker  # noqa: E402


def test_the_local_provider_sums_its_engines_queues() -> None:
    provider = LocalProvider([])
    assert provider.queued_images() == 0  # a local provider with nothing loaded yet has an empty queue
    engines: dict[str, Any] = {"a": SimpleNamespace(queued_images=3), "b": SimpleNamespace(queued_images=2)}
    provider.engines = engines
    assert provider.queued_images() == 5
    text = exposition(StateCollector(CircuitBreaker(5, 30), {"local": provider}, lambda: 0)).decode()
    assert "imagegate_local_engine_queued_images 5.0" in text
