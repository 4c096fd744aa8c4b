"""What the gateway counts, and how `/metrics` shows it (Prometheus text format, prometheus_client).

Events are counted where they happen, one line at each call site:

- `request_started` / `request_finished` (server/observability.py): every HTTP request but the
  monitoring routes, by route template (never a raw path), model, provider and status;
- `upstream_attempt` (dispatch.py): every upstream call attempt, retries included, by outcome
  ("ok" or our error code) and time;
- `count_usage` (pipeline.py): images and cost from each usage record.

States are read when Prometheus scrapes (`StateCollector`): each provider's circuit breaker, the
job queue's depth (cached for a second: a scrape must not be a query per scraper) and the local
engine's queue.

Several worker processes (`IMAGEGATE_WORKERS` > 1) report as one: `serve` gives them a private
`PROMETHEUS_MULTIPROC_DIR` before they start (`private_multiprocess_dir`), each writes its counts
there, and the worker that answers a scrape sums every worker's files (`MultiProcessCollector`).
A dead worker's counts stay in the sums; its in-flight gauge leaves them (`forget_process`). The
scrape-time states come from the answering worker (the job queue is the database's, so the same in
every worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .errors import ImagegateError

if TYPE_CHECKING:
    from .providers import ImageProvider
    from .resilience import CircuitBreaker

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "StateCollector",
    "count_usage",
    "exposition",
    "forget_process",
    "private_multiprocess_dir",
    "request_finished",
    "request_started",
    "upstream_attempt",
    "upstream_outcome",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a cached answer (50 ms) to the longest request deadline (600 s): 4K images take a minute.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
NONE = "-"  # a label with nothing to say (no model resolved, no provider served)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
JOBS_CACHE_SECONDS = 1.0

# `_created` series double the output for nothing a dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter(
    "imagegate_requests",
    "HTTP requests answered, by route template, model (as the client named it), serving provider and status.",
    ("route", "model", "provider", "status"),
)
REQUEST_DURATION = Histogram(
    "imagegate_request_duration_seconds",
    "Time from a request's arrival to the end of its answer.",
    ("route", "status"),
    buckets=DURATION_BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "imagegate_upstream_requests",
    'Upstream call attempts (each retry counts), by provider and outcome ("ok" or the error code).',
    ("provider", "outcome"),
)
UPSTREAM_DURATION = Histogram(
    "imagegate_upstream_duration_seconds",
    "Time of one upstream call attempt.",
    ("provider",),
    buckets=DURATION_BUCKETS,
)
IMAGES = Counter("imagegate_images", "Images the upstreams made (from the usage records).", ("model", "provider"))
COST = Counter("imagegate_cost_usd", "What those images cost, in USD (from the usage records).", ("model", "provider"))
# livesum: the sum over the workers still running (a dead worker's requests are in flight nowhere).
IN_FLIGHT = Gauge("imagegate_requests_in_flight", "Requests being served now.", multiprocess_mode="livesum")


# --- events ------------------------------------------------------------------------------------


def request_started() -> None:
    IN_FLIGHT.inc()


def request_finished(route: str, model: str | None, provider: str | None, status: int, seconds: float) -> None:
    IN_FLIGHT.dec()
    REQUESTS.labels(route, model or NONE, provider or NONE, str(status)).inc()
    REQUEST_DURATION.labels(route, str(status)).observe(seconds)


def upstream_outcome(exc: BaseException | None) -> str:
    """The outcome's label: "ok", our error code (upstream_timeout, upstream_rate_limited, ...),
    "cancelled" (the request's deadline or its client ended the call) or "error" (a bug)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ImagegateError):
        return exc.code or "error"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


@contextlib.contextmanager
def upstream_attempt(provider: str) -> Iterator[None]:
    """Around one upstream call attempt: counted by outcome, and timed."""
    started = time.perf_counter()
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        UPSTREAM_REQUESTS.labels(provider, upstream_outcome(failure)).inc()
        UPSTREAM_DURATION.labels(provider).observe(time.perf_counter() - started)


def count_usage(model: str, provider: str, images: int, cost_usd: float) -> None:
    IMAGES.labels(model, provider).inc(images)
    COST.labels(model, provider).inc(cost_usd)


# --- states, read at scrape time -----------------------------------------------------------------


class _Cached:
    """A value read at most once per `seconds`, whoever asks (scrapes may come from several threads)."""

    def __init__(self, read: Callable[[], int], seconds: float) -> None:
        self._read = read
        self._seconds = seconds
        self._lock = threading.Lock()
        self._value = 0
        self._read_at: float | None = None

    def get(self) -> int:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self._seconds:
                self._value = self._read()
                self._read_at = now
            return self._value


class StateCollector(Collector):
    """One gateway's states as gauges: circuit breakers, job queue depth, local engine queue."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        providers: Mapping[str, ImageProvider],
        queued_jobs: Callable[[], int],
        jobs_cache_seconds: float = JOBS_CACHE_SECONDS,
    ) -> None:
        self.breaker = breaker
        self.providers = providers
        self.queued_jobs = _Cached(queued_jobs, jobs_cache_seconds)

    def collect(self) -> Iterable[Metric]:
        breakers = GaugeMetricFamily(
            "imagegate_circuit_breaker_state",
            "Each provider's circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=("provider",),
        )
        for provider_id in sorted(self.providers):
            breakers.add_metric((provider_id,), BREAKER_STATES[self.breaker.state(provider_id)])
        yield breakers
        yield GaugeMetricFamily("imagegate_jobs_queued", "Async jobs waiting to run.", value=self.queued_jobs.get())
        local = [q for p in self.providers.values() if (q := p.queued_images()) is not None]
        if local:  # only where a provider has a queue of its own (the local engine)
            yield GaugeMetricFamily(
                "imagegate_local_engine_queued_images", "Images waiting in the local engine's queue.", value=sum(local)
            )


# --- exposition ---------------------------------------------------------------------------------


def exposition(states: Collector | None = None) -> bytes:
    """The text a scrape gets: every worker's counts (or this process's), then the states. Blocking
    (files, the database): call it in a worker thread."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if states is not None:
        own = CollectorRegistry(auto_describe=True)
        own.register(states)
        text += generate_latest(own)
    return text


@contextlib.contextmanager
def private_multiprocess_dir() -> Iterator[str]:
    """A fresh directory for the workers' counts, in the environment they inherit; removed at exit
    (counts from an earlier run would otherwise be added to this one's)."""
    directory = tempfile.mkdtemp(prefix="imagegate-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def forget_process(pid: int) -> None:
    """A worker is gone: its live gauges (in flight) leave the sums; its counters stay."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
