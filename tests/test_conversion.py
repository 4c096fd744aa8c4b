"""The conversion pool: a bounded number of threads and a memory budget for decode/encode jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from imagegate.conversion import ConversionPool, encode_estimate
from imagegate.errors import ConversionBusy


class Gauge:
    """Counts jobs running at once; each job blocks until `release` is set."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def job(self, name: str) -> Callable[[], str]:
        def run() -> str:
            with self._lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
                self.started.append(name)
            self.release.wait(10)
            with self._lock:
                self.running -= 1
            return name

        return run


async def settle(until: Callable[[], bool] | None = None) -> None:
    """Let queued jobs reach their threads: a moment, and on a loaded machine as long as it takes
    (at most 10 s) for `until` to hold."""
    await asyncio.sleep(0.2)
    for _ in range(200):
        if until is None or until():
            return
        await asyncio.sleep(0.05)


async def test_jobs_beyond_the_memory_budget_wait_for_memory_to_be_released() -> None:
    pool = ConversionPool(workers=8, memory_bytes=100, max_wait_seconds=10)
    gauge = Gauge()
    tasks = [asyncio.create_task(pool.run(40, gauge.job(f"j{i}"))) for i in range(4)]
    await settle(until=lambda: gauge.running >= 2)
    await settle()  # room for a third to start, were the budget not kept
    assert gauge.running == 2  # 2 x 40 fit in 100; the third and fourth wait
    assert pool.reserved == 80
    gauge.release.set()
    assert sorted(await asyncio.gather(*tasks)) == ["j0", "j1", "j2", "j3"]
    assert gauge.peak == 2
    assert pool.reserved == 0


async def test_threads_are_bounded_by_workers_even_without_a_memory_budget() -> None:
    pool = ConversionPool(workers=2, memory_bytes=0, max_wait_seconds=10)
    gauge = Gauge()
    tasks = [asyncio.create_task(pool.run(10**12, gauge.job(f"j{i}"))) for i in range(5)]
    await settle(until=lambda: gauge.running >= 2)
    await settle()
    assert gauge.running == 2
    gauge.release.set()
    await asyncio.gather(*tasks)
    assert gauge.peak == 2


async def test_an_image_larger_than_the_whole_budget_is_conversion_busy_at_once() -> None:
    pool = ConversionPool(workers=2, memory_bytes=100 * 2**20, max_wait_seconds=30)
    with pytest.raises(ConversionBusy) as caught:
        await pool.run(200 * 2**20, lambda: "never")
    assert caught.value.status_code == 503
    assert caught.value.code == "conversion_busy"
    assert "IMAGEGATE_CONVERSION_MEMORY_BYTES" in caught.value.message
    assert caught.value.headers()["retry-after"] == "30"


async def test_a_job_that_would_wait_too_long_is_conversion_busy_and_frees_its_place() -> None:
    pool = ConversionPool(workers=2, memory_bytes=100, max_wait_seconds=0.2)
    gauge = Gauge()
    holder = asyncio.create_task(pool.run(100, gauge.job("holder")))
    await settle()
    with pytest.raises(ConversionBusy) as caught:
        await pool.run(50, lambda: "late")
    assert "retry-after" in caught.value.headers()
    assert pool.reserved == 100  # only the holder's reservation
    gauge.release.set()
    await holder
    assert await pool.run(50, lambda: "next") == "next"
    assert pool.reserved == 0


async def test_waiting_never_outlasts_the_request_deadline() -> None:
    pool = ConversionPool(workers=2, memory_bytes=100, max_wait_seconds=600)
    gauge = Gauge()
    holder = asyncio.create_task(pool.run(100, gauge.job("holder")))
    await settle()
    deadline = asyncio.get_running_loop().time() + 0.2
    with pytest.raises(ConversionBusy):
        await asyncio.wait_for(pool.run(10, lambda: "late", deadline=deadline), timeout=10)
    gauge.release.set()
    await holder


async def test_a_large_waiting_job_is_not_overtaken_by_smaller_ones() -> None:
    pool = ConversionPool(workers=8, memory_bytes=100, max_wait_seconds=10)
    gauge = Gauge()
    first = asyncio.create_task(pool.run(60, gauge.job("first")))
    await settle(until=lambda: gauge.started == ["first"])
    big = asyncio.create_task(pool.run(80, gauge.job("big")))
    await settle()
    # Would fit beside "first" but not beside "big", so the order it starts in is deterministic.
    small = asyncio.create_task(pool.run(30, gauge.job("small")))
    await settle()
    assert gauge.started == ["first"]
    gauge.release.set()
    await asyncio.gather(first, big, small)
    assert gauge.started == ["first", "big", "small"]


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    pool = ConversionPool(workers=8, memory_bytes=100, max_wait_seconds=10)
    gauge = Gauge()
    holder = asyncio.create_task(pool.run(60, gauge.job("holder")))
    await settle(until=lambda: gauge.started == ["holder"])
    blocked = asyncio.create_task(pool.run(80, gauge.job("cancelled")))
    await settle()
    small = asyncio.create_task(pool.run(30, gauge.job("small")))
    await settle()
    blocked.cancel()
    await settle(until=lambda: "small" in gauge.started)
    assert gauge.started == ["holder", "small"]  # no longer queued behind the cancelled job
    gauge.release.set()
    await asyncio.gather(holder, small)
    assert pool.reserved == 0


def test_estimates_follow_the_measured_encoder_costs() -> None:
    side = 4096
    webp, avif, png = (encode_estimate(side, side, f) for f in ("webp", "avif", "png"))
    assert side * side * 4 < png < webp < avif  # every encode holds at least the decoded RGB(A) image
    assert encode_estimate(side, side, "png", composite=True) > png


async def test_a_release_while_the_queue_head_is_cancelled_skips_it() -> None:
    """A waiter cancelled, and memory released in the same tick, before its task runs again: the
    release must pass it over (not grant a cancelled future, which raised InvalidStateError) and
    the cancelled task must still leave the queue cleanly."""
    pool = ConversionPool(workers=8, memory_bytes=100, max_wait_seconds=10)
    gauge = Gauge()
    gauge.release.set()
    pool.reserved = 100  # held by a job whose release comes below
    cancelled = asyncio.create_task(pool.run(60, gauge.job("cancelled")))
    queued = asyncio.create_task(pool.run(60, gauge.job("queued")))
    await settle()
    cancelled.cancel()  # its future is cancelled now; its task runs its clean-up only later
    pool._release(100)  # that job finishes in the same tick and meets the cancelled head
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await queued == "queued"
    assert gauge.started == ["queued"]
    assert pool.reserved == 0
