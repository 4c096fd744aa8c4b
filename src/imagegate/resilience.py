"""Retries, backoff and the circuit breaker: which failures are worth another try, where, and when.

- A client error (bad input, content policy) is final: no provider will answer differently.
- An upstream that rejects our key is skipped at once (retrying it cannot help).
- Anything else from an upstream (429, capacity, 5xx, timeout, dropped connection, garbage) is
  retried on the same provider with exponential backoff and full jitter, then the next provider.
- A provider whose calls keep failing is skipped for a cool-down, then tried again (half-open).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .errors import ImagegateError

# Which failures are worth what is decided by the error's class (`imagegate.errors`), never by its
# code string; these read the class attributes, for the callers that ask in words.


def is_upstream_failure(error: ImagegateError) -> bool:
    """Failures of the provider (worth trying elsewhere), as opposed to the client's request."""
    return error.upstream_failure


def is_retryable(error: ImagegateError) -> bool:
    """Worth another try at the same provider (not a rejected key, an oversized answer, a full engine)."""
    return error.upstream_failure and error.retryable


def is_capacity(error: ImagegateError) -> bool:
    """At capacity or rate limited: the case `allow_fallback_model` is for."""
    return error.capacity


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Full jitter (uniform in [0, base * 2**attempt], capped); an upstream's Retry-After is a floor."""
    jittered = random.uniform(0, min(cap, base * 2**attempt))
    return max(jittered, retry_after or 0.0)


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None


class CircuitBreaker:
    """Per provider: open after `threshold` consecutive failures, half-open after `cooldown`."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._circuits: dict[str, _Circuit] = {}

    def _now(self) -> float:
        return time.monotonic()

    def is_open(self, provider_id: str) -> bool:
        circuit = self._circuits.get(provider_id)
        if circuit is None or circuit.opened_at is None:
            return False
        if self._now() - circuit.opened_at >= self.cooldown:
            return False  # half-open: let a call through; its outcome closes or re-opens it
        return True

    def record_success(self, provider_id: str) -> None:
        self._circuits[provider_id] = _Circuit()

    def record_failure(self, provider_id: str) -> None:
        circuit = self._circuits.setdefault(provider_id, _Circuit())
        circuit.failures += 1
        if circuit.failures >= self.threshold:
            circuit.opened_at = self._now()

    def adopt(self, provider_id: str, failures: int, opened_at: float | None) -> None:
        """Take a provider's circuit as another instance left it (limits.SharedBreaker);
        `opened_at` on this breaker's clock."""
        self._circuits[provider_id] = _Circuit(failures, opened_at)

    def state(self, provider_id: str) -> str:
        circuit = self._circuits.get(provider_id)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        return "open" if self.is_open(provider_id) else "half-open"
