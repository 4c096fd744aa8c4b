"""The serving engine on a tiny real model: batching, seeds, the bounded queue, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from imagegate.engine.describe import read_checkpoint
from imagegate.engine.loader import LoadedModel, load_model, pick_device, pick_dtype
from imagegate.engine.pipelines import Job, JobOutput
from imagegate.engine.runner import Engine, EngineBusy

from .batch_tolerance import assert_same_render


@pytest.fixture(scope="module")
def model(tiny_checkpoints: Any) -> LoadedModel:
    return load_model(read_checkpoint(str(tiny_checkpoints())))


@pytest.fixture
async def engine(model: LoadedModel) -> AsyncIterator[Engine]:
    engine = Engine(model, max_batch_images=8, max_queued_images=8)
    yield engine
    await engine.aclose()


def job(prompt: str = "a red cat", seeds: tuple[int, ...] = (1,), steps: int = 2, size: int = 32, **kwargs: Any) -> Job:
    return Job(
        task="text2image",
        prompt=prompt,
        seeds=list(seeds),
        width=size,
        height=size,
        steps=steps,
        guidance_scale=0.0,
        **kwargs,
    )


def slow_job() -> Job:
    """Long enough (hundreds of ms) for the test to act while it runs."""
    return job(steps=150, size=64)


def pixels(output: JobOutput, index: int = 0) -> np.ndarray:
    return np.asarray(output.images[index])


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Wait for engine state instead of sleeping a guessed time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def running(engine: Engine, task: asyncio.Task[Any]) -> None:
    """Until `task`'s job has left the queue for the device."""
    await until(lambda: engine.queued_images == 0 and engine._worker is not None)
    await asyncio.sleep(0.05)
    assert not task.done()


# --- device and dtype -------------------------------------------------------------------------


def test_device_is_chosen_automatically_with_its_dtype(model: LoadedModel) -> None:
    assert pick_device("auto") == "cpu"  # this machine has neither CUDA nor MPS
    assert model.device == "cpu" and model.dtype == torch.float32
    assert pick_dtype("auto", "cuda") == torch.float16
    assert pick_dtype("bfloat16", "cuda") == torch.bfloat16
    assert pick_device("cuda:1") == "cuda:1"
    # On the CPU a batch is decoded image by image (see loader.prepare_for_serving).
    assert model.base.vae.use_slicing


def test_plain_pipeline_arguments_are_typed_from_the_signature(model: LoadedModel) -> None:
    assert model.scalar_type("text2image", "eta") is float
    assert model.scalar_type("text2image", "clip_skip") is int  # `int | None = None`: from the annotation
    assert model.scalar_type("img2img", "strength") is float
    assert model.scalar_type("text2image", "generator") is None  # not a plain value
    assert model.scalar_type("text2image", "no_such_argument") is None


# --- batching ---------------------------------------------------------------------------------


async def test_concurrent_compatible_jobs_share_one_forward_pass(engine: Engine) -> None:
    outputs = await asyncio.gather(*(engine.submit(job(prompt=f"cat {i}", seeds=(i,))) for i in range(4)))
    assert engine.stats.batch_sizes == [4]
    assert all(len(o.images) == 1 and o.images[0].size == (32, 32) for o in outputs)
    assert len({pixels(o).tobytes() for o in outputs}) == 4


async def test_jobs_with_different_settings_are_not_mixed(engine: Engine) -> None:
    jobs = [job(steps=2), job(steps=3), job(steps=2), job(steps=3, size=64)]
    outputs = await asyncio.gather(*(engine.submit(j) for j in jobs))
    # Oldest first; each batch takes the later jobs that match it.
    assert engine.stats.batch_sizes == [2, 1, 1]
    assert outputs[3].images[0].size == (64, 64)


async def test_a_batch_never_exceeds_max_batch_images(model: LoadedModel) -> None:
    engine = Engine(model, max_batch_images=2, max_queued_images=8)
    try:
        await asyncio.gather(*(engine.submit(job(seeds=(i,))) for i in range(5)))
    finally:
        await engine.aclose()
    assert engine.stats.batch_sizes == [2, 2, 1]


async def test_n_images_are_one_batch(engine: Engine) -> None:
    output = await engine.submit(job(seeds=(7, 8, 9)))
    assert engine.stats.batch_sizes == [3]
    assert len(output.images) == 3


# --- seeds ------------------------------------------------------------------------------------


async def test_same_seed_same_pixels_different_seed_different_pixels(engine: Engine) -> None:
    first = await engine.submit(job(seeds=(42,)))
    again = await engine.submit(job(seeds=(42,)))
    other = await engine.submit(job(seeds=(43,)))
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


async def test_each_image_has_its_own_seed_whatever_the_batch(engine: Engine) -> None:
    """Image i of a batch is the image its seed gives alone: batching changes nothing visible
    (within the rounding tolerance of batch_tolerance.py)."""
    alone = [await engine.submit(job(prompt=p, seeds=(s,))) for p, s in (("a cat", 5), ("a dog", 6))]
    batched = await asyncio.gather(
        engine.submit(job(prompt="a cat", seeds=(5,))), engine.submit(job(prompt="a dog", seeds=(6,)))
    )
    assert engine.stats.batch_sizes[-1] == 2
    for a, b in zip(alone, batched, strict=True):
        assert_same_render(pixels(a), pixels(b))
    n_images = await engine.submit(job(prompt="a cat", seeds=(5, 6)))
    assert_same_render(pixels(n_images, 0), pixels(alone[0]))


# --- the bounded queue ------------------------------------------------------------------------


async def test_a_full_queue_refuses_at_once_with_a_retry_after(model: LoadedModel) -> None:
    engine = Engine(model, max_batch_images=1, max_queued_images=2)
    try:
        busy = asyncio.create_task(engine.submit(slow_job()))
        await running(engine, busy)
        queued = asyncio.create_task(engine.submit(job(seeds=(1, 2))))
        await until(lambda: engine.queued_images == 2)
        with pytest.raises(EngineBusy) as info:
            await engine.submit(job())
        assert info.value.retry_after >= 1
        assert engine.stats.refused == 1
        assert len((await queued).images) == 2  # the queued work is unaffected
        await busy
    finally:
        await engine.aclose()


# --- cancellation -----------------------------------------------------------------------------


async def test_a_cancelled_queued_job_never_runs(engine: Engine) -> None:
    busy = asyncio.create_task(engine.submit(slow_job()))
    await running(engine, busy)
    abandoned = asyncio.create_task(engine.submit(job(seeds=(1, 2, 3))))
    await until(lambda: engine.queued_images == 3)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert engine.queued_images == 0
    assert engine.stats.cancelled == 1
    await busy
    assert engine.stats.images == 1  # only the slow job's image was ever computed


async def test_a_running_batch_whose_callers_left_stops_early(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    full = await engine.submit(slow_job())
    full_seconds = loop.time() - started
    task = asyncio.create_task(engine.submit(slow_job()))
    await running(engine, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: engine.stats.batches == 2)
    assert engine.stats.interrupted == 1
    assert len(full.images) == 1
    # The engine is free again well before a full run would have ended.
    started = loop.time()
    await engine.submit(job())
    assert loop.time() - started < full_seconds


async def test_one_callers_departure_does_not_stop_a_shared_batch(engine: Engine) -> None:
    busy = asyncio.create_task(engine.submit(slow_job()))
    await running(engine, busy)
    leaving = asyncio.create_task(engine.submit(job(seeds=(1,))))
    staying = asyncio.create_task(engine.submit(job(seeds=(2,))))
    await until(lambda: engine.queued_images == 2)
    await busy
    await until(lambda: engine.queued_images == 0)  # both are in the running batch now
    leaving.cancel()
    output = await staying
    assert len(output.images) == 1
    assert engine.stats.interrupted == 0


# --- failures ---------------------------------------------------------------------------------


async def test_a_failing_batch_fails_its_callers_and_the_engine_goes_on(engine: Engine) -> None:
    broken = Job(
        task="img2img",
        prompt="x",
        seeds=[1],
        width=32,
        height=32,
        steps=2,
        guidance_scale=0.0,
        strength=0.5,
        image=None,
    )  # img2img without an image: the pipeline raises
    with pytest.raises(ValueError):
        await engine.submit(broken)
    output = await engine.submit(job())
    assert len(output.images) == 1


async def test_img2img_and_inpaint_views_share_the_weights(engine: Engine, model: LoadedModel) -> None:
    source = Image.new("RGB", (32, 32), (200, 30, 30))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 16))
    edited = await engine.submit(
        Job(
            task="img2img",
            prompt="x",
            seeds=[1],
            width=32,
            height=32,
            steps=2,
            guidance_scale=0.0,
            strength=0.5,
            image=source,
        )
    )
    painted = await engine.submit(
        Job(
            task="inpaint",
            prompt="x",
            seeds=[1],
            width=32,
            height=32,
            steps=2,
            guidance_scale=0.0,
            strength=1.0,
            image=source,
            mask=mask,
        )
    )
    assert edited.images[0].size == painted.images[0].size == (32, 32)
    assert model.pipeline("img2img").unet is model.base.unet
    assert model.pipeline("inpaint").unet is model.base.unet


async def test_closing_the_engine_releases_every_waiting_caller(model: LoadedModel) -> None:
    engine = Engine(model, max_batch_images=1, max_queued_images=8)
    busy = asyncio.create_task(engine.submit(slow_job()))
    await running(engine, busy)
    queued = asyncio.create_task(engine.submit(job()))
    await until(lambda: engine.queued_images == 1)
    await engine.aclose()
    for task in (busy, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
