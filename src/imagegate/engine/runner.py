"""The serving engine: one loaded model, one device, a bounded queue and a batching loop.

- Requests wait in a queue bounded in images; a full queue refuses at once (`EngineBusy`, a 503
  with Retry-After) instead of piling up memory.
- One batch runs at a time, on one dedicated thread (the device is the bottleneck; a second
  concurrent forward pass would only compete for it). While it runs, new requests queue up.
- The next batch takes the oldest waiting job and every later job with the same settings, up to
  `max_batch_images`, and serves them with one pipeline call.
- A caller that goes away (its task is cancelled) leaves the queue at once; a running batch
  whose callers have all gone stops after the current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .loader import LoadedModel
from .pipelines import Job, JobOutput, run_batch


class EngineBusy(Exception):
    def __init__(self, queued_images: int, retry_after: float) -> None:
        super().__init__(f"the local engine's queue is full ({queued_images} images waiting)")
        self.retry_after = retry_after


@dataclass
class EngineStats:
    batches: int = 0
    images: int = 0
    cancelled: int = 0  # jobs whose caller left before they ran
    interrupted: int = 0  # batches cut short because every caller left
    refused: int = 0  # jobs refused because the queue was full
    largest_batch: int = 0  # images in the biggest forward pass so far
    batch_sizes: list[int] = field(default_factory=list)  # recent batches, newest last


@dataclass(eq=False)
class _Pending:
    job: Job
    future: asyncio.Future[JobOutput]


class Engine:
    def __init__(self, model: LoadedModel, *, max_batch_images: int = 8, max_queued_images: int = 64) -> None:
        self.model = model
        self.max_batch_images = max_batch_images
        self.max_queued_images = max_queued_images
        self.stats = EngineStats()
        self._queue: deque[_Pending] = deque()
        self._running: list[_Pending] = []  # the batch on the device now
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: the model is used by one batch at a time, always from the same thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagegate-engine")
        self._seconds_per_image = 0.0  # moving average, for Retry-After

    @property
    def queued_images(self) -> int:
        return sum(p.job.count for p in self._queue)

    async def submit(self, job: Job) -> JobOutput:
        """Queue `job` and wait for its images. Raises EngineBusy when the queue is full."""
        queued = self.queued_images
        if queued and queued + job.count > self.max_queued_images:
            self.stats.refused += 1
            raise EngineBusy(queued, self.retry_after(queued + job.count))
        self._ensure_worker()
        assert self._wakeup is not None
        pending = _Pending(job, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending in self._queue:  # still waiting: it never runs
                self._queue.remove(pending)
                self.stats.cancelled += 1
            pending.future.cancel()
            raise

    def retry_after(self, images_ahead: int) -> float:
        """Seconds until the queue has room again, from the recent time per image."""
        per_image = self._seconds_per_image or 1.0
        return max(1.0, math.ceil(per_image * max(1, images_ahead - self.max_queued_images // 2)))

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="imagegate-engine")

    def _next_batch(self) -> list[_Pending]:
        """The oldest job plus every later compatible one, within the batch size."""
        first = self._queue.popleft()
        batch, size, key = [first], first.job.count, first.job.batch_key()
        for pending in list(self._queue):
            if pending.job.batch_key() == key and size + pending.job.count <= self.max_batch_images:
                self._queue.remove(pending)
                batch.append(pending)
                size += pending.job.count
        return batch

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._running = self._next_batch()
            started = time.perf_counter()

            def abandoned(batch: list[_Pending] = batch) -> bool:
                return all(p.future.done() for p in batch)

            try:
                outputs = await asyncio.shield(
                    loop.run_in_executor(self._executor, run_batch, self.model, [p.job for p in batch], abandoned)
                )
            except Exception as exc:  # the pipeline failed: every caller of this batch hears it
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            finally:
                self._running = []
            self._record(batch, time.perf_counter() - started, abandoned())
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(output)

    def _record(self, batch: list[_Pending], seconds: float, interrupted: bool) -> None:
        images = sum(p.job.count for p in batch)
        stats = self.stats
        stats.batches += 1
        stats.images += images
        stats.largest_batch = max(stats.largest_batch, images)
        stats.batch_sizes = [*stats.batch_sizes[-99:], images]
        stats.interrupted += int(interrupted)
        if not interrupted:
            per_image = seconds / images
            self._seconds_per_image = (
                per_image if not self._seconds_per_image else (0.8 * self._seconds_per_image + 0.2 * per_image)
            )

    async def aclose(self) -> None:
        stranded = [*self._running, *self._queue]  # nobody waits forever on a closed engine
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in stranded:
            pending.future.cancel()
        self._queue.clear()
        # A running batch finishes first (it cannot be killed mid-kernel); the event loop need not wait.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
