"""A bounded pool for image decoding and encoding: a few threads and a memory budget.

Converting one 4K image to WebP needs ~180 MB for a moment and AVIF ~490 MB; with one worker
thread per request (anyio's default limiter lets 40 run at once) sixteen concurrent 4K requests
took 6 GB. Here every decode/encode job first reserves its estimated peak memory, computed from
the pixel size the header already told us, then takes one of `workers` threads (one per core by
default: the work is CPU-bound, more threads only hold more memory at once). A job that cannot
get its reservation waits, first come first served, until the budget has room; one that would
wait past its limit, or that is larger than the whole budget, is a 503 `conversion_busy` with
Retry-After instead of an out-of-memory kill.

The estimates are measured peaks (Pillow 11, libwebp, libavif; `bench/conversion_memory.py`
prints them again): a decoded RGB or RGBA image is 4 bytes per pixel, and each encoder adds its
own working memory on top.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from .config import Settings
from .errors import ConversionBusy

T = TypeVar("T")

# Peak bytes per pixel of "decode the source, then encode to this format", measured on a noisy
# 4096x4096 RGB PNG (peak RSS growth / pixels, rounded up): the decoded image is 4 B/px of it.
ENCODE_BYTES_PER_PIXEL = {"png": 6, "jpeg": 5, "gif": 9, "webp": 11, "avif": 30}
DECODE_BYTES_PER_PIXEL = 5  # decoding only (checking an upload): the image plus the codec's buffers
# Compositing a masked edit holds three RGBA images (original, edit, mask) and writes a PNG.
COMPOSITE_BYTES_PER_PIXEL = 14
GIB = 1024**3
DEFAULT_MEMORY_CAP = 3 * GIB // 2


def default_memory_bytes() -> int:
    """1.5 GiB, or a quarter of physical memory on a smaller machine."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return DEFAULT_MEMORY_CAP
    return min(DEFAULT_MEMORY_CAP, physical // 4)


def encode_estimate(width: int, height: int, target: str, *, composite: bool = False) -> int:
    """The peak memory of decoding a width x height image and encoding it to `target`."""
    per_pixel = ENCODE_BYTES_PER_PIXEL.get(target, max(ENCODE_BYTES_PER_PIXEL.values()))
    if composite:
        per_pixel += COMPOSITE_BYTES_PER_PIXEL
    return width * height * per_pixel


def decode_estimate(width: int, height: int) -> int:
    return width * height * DECODE_BYTES_PER_PIXEL


class ConversionPool:
    """`await pool.run(estimate, fn, *args, deadline=...)`: fn in a worker thread once `estimate`
    bytes of the budget and a thread are free. `memory_bytes=0` means no memory budget."""

    def __init__(self, workers: int, memory_bytes: int, max_wait_seconds: float) -> None:
        self.workers = max(1, workers)
        self.memory_bytes = memory_bytes
        self.max_wait_seconds = max_wait_seconds
        self.reserved = 0  # bytes held by running (or thread-waiting) jobs
        self._threads = anyio.CapacityLimiter(self.workers)
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @classmethod
    def from_settings(cls, settings: Settings) -> ConversionPool:
        memory = settings.conversion_memory_bytes
        return cls(
            settings.conversion_workers or os.cpu_count() or 1,
            default_memory_bytes() if memory is None else memory,
            settings.conversion_max_wait_seconds,
        )

    async def run(self, estimate: int, fn: Callable[..., T], *args: object, deadline: float | None = None) -> T:
        """`deadline` is the request's, in the event loop's clock: waiting never outlasts it."""
        budgeted = self.memory_bytes > 0
        if budgeted and estimate > self.memory_bytes:
            raise ConversionBusy(
                f"Converting this image needs about {estimate // 2**20} MiB, more than the gateway's conversion "
                f"memory budget of {self.memory_bytes // 2**20} MiB (IMAGEGATE_CONVERSION_MEMORY_BYTES).",
                retry_after=self.max_wait_seconds,
            )
        wait = self._wait_limit(deadline)
        try:
            async with asyncio.timeout(wait):
                if budgeted:
                    await self._reserve(estimate)
                reserved = estimate if budgeted else 0
        except TimeoutError:
            raise ConversionBusy(
                f"The gateway is busy converting other images and could not start this one within {wait:.0f} s.",
                retry_after=max(1.0, min(wait, 30.0)),
            ) from None
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
        finally:
            self._release(reserved)

    def _wait_limit(self, deadline: float | None) -> float:
        if deadline is None:
            return self.max_wait_seconds
        remaining = deadline - asyncio.get_running_loop().time()
        return max(0.0, min(self.max_wait_seconds, remaining))

    async def _reserve(self, estimate: int) -> None:
        # First come, first served: a big job is not starved by a stream of small ones.
        if not self._waiters and self.reserved + estimate <= self.memory_bytes:
            self.reserved += estimate
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (estimate, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(estimate)  # granted just as we gave up: hand it on
            else:
                if entry in self._waiters:  # a wake-up may already have dropped it as cancelled
                    self._waiters.remove(entry)
                self._wake()  # the queue's head may have changed
            raise

    def _release(self, amount: int) -> None:
        self.reserved -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            estimate, waiter = self._waiters[0]
            if waiter.done():  # cancelled, its task not yet back to take itself off the queue
                self._waiters.popleft()
                continue
            if self.reserved + estimate > self.memory_bytes:
                return
            self._waiters.popleft()
            self.reserved += estimate
            waiter.set_result(None)
