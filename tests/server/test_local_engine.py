"""The local engine end to end: the official openai SDK -> a real gateway -> tiny diffusers
checkpoints rendered on the CPU (`local` provider, IMAGEGATE_LOCAL_MODEL).

Covers text-to-image, edits (img2img, inpainting with the same weights, an inpainting
checkpoint, an instruction checkpoint with the gateway's mask compositing), seeds, batching
within and across requests, the bounded queue (503 + Retry-After), cancellation on client
disconnect, bad inputs, the model list, hub ids served from the cache, bad configurations and
the CLI.

"Busy" is a state the tests control, not a race against a slow render: `EngineSpy` wraps the
engine's one pipeline call, records every batch's jobs, and can hold the engine thread at the
start of a batch until the test releases it.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from huggingface_hub import constants as hub_constants
from openai.types import ImagesResponse
from PIL import Image

import imagegate.engine.runner as runner_module
from imagegate.cli import cli
from imagegate.config import Settings
from imagegate.engine.describe import LocalModelError
from imagegate.engine.pipelines import Job
from imagegate.engine.runner import Engine
from imagegate.gateway import Gateway

from ..conftest import API_KEY, RunningGateway
from ..engine.batch_tolerance import assert_same_render
from ..engine.tiny_models import build_fake_hub_cache
from ..fakes.images import solid_png

MODEL = "local/tiny-sd"
FAST = {"num_inference_steps": 2}  # 2 steps at 32 px: tens of milliseconds per image
FileTuple = tuple[str, bytes, str]
Factory = Callable[..., RunningGateway]
WAIT_S = 30.0  # deadline for engine states that take milliseconds; generous for a noisy machine


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test renders with one torch thread (see the top-level conftest)."""


# --- helpers ---------------------------------------------------------------------------------


def decode(item: Any) -> bytes:
    """The bytes of one `data` item of an images response (b64_json)."""
    assert item.b64_json, "expected b64_json"
    return base64.b64decode(item.b64_json)


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def fmt_of(data: bytes) -> str:
    return str(open_image(data).format).lower()


def size_of(data: bytes) -> tuple[int, int]:
    return open_image(data).size


def rgb_pixels(data: bytes) -> bytes:
    return open_image(data).convert("RGB").tobytes()


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def mask_png(width: int, height: int, keep_left: int | None = None) -> bytes:
    """OpenAI mask semantics: opaque pixels are kept, transparent ones are edited. The left
    `keep_left` columns are opaque (all of it when None)."""
    keep = width if keep_left is None else keep_left
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, keep, height))
    return png_bytes(mask)


def png_file(data: bytes, name: str = "in.png") -> FileTuple:
    return (name, data, "image/png")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll `predicate` (engine state read across threads) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except RuntimeError:  # "deque mutated during iteration": the server thread moved; look again
            pass
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def gateway_of(running: RunningGateway) -> Gateway:
    gateway: Gateway = running.server.app.state.gateway
    return gateway


def engine_of(running: RunningGateway) -> Engine:
    """The one engine of a gateway serving one local model."""
    engines = gateway_of(running).providers["local"].engines  # type: ignore[attr-defined]
    assert len(engines) == 1, engines
    engine: Engine = next(iter(engines.values()))
    return engine


def generate(client: openai.OpenAI, model: str | None = MODEL, **kwargs: Any) -> ImagesResponse:
    """A fast text-to-image request, b64_json unless told otherwise."""
    kwargs.setdefault("prompt", "a red cat")
    kwargs.setdefault("response_format", "b64_json")
    kwargs["extra_body"] = {**FAST, **kwargs.get("extra_body", {})}
    if model is not None:
        kwargs["model"] = model
    return client.images.generate(**kwargs)


def edit(client: openai.OpenAI, image: FileTuple, model: str = MODEL, **kwargs: Any) -> ImagesResponse:
    """A fast edit request (multipart, like the SDK always sends it), b64_json."""
    kwargs.setdefault("prompt", "make it blue")
    kwargs.setdefault("response_format", "b64_json")
    kwargs["extra_body"] = {**FAST, **kwargs.get("extra_body", {})}
    return client.images.edit(model=model, image=image, **kwargs)


def expect_error(call: Callable[[], Any], status: int) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    assert info.value.status_code == status, info.value.body
    return info.value


def in_background(pool: ThreadPoolExecutor, running: RunningGateway, **kwargs: Any) -> Future[ImagesResponse]:
    """A text-to-image request from another thread, with its own client."""
    return pool.submit(lambda: generate(running.client(), **kwargs))


class EngineSpy:
    """Wraps `imagegate.engine.runner.run_batch` (the engine thread's one pipeline call):
    `batches` records the jobs of every forward pass, `abandoned` each batch's own "have all its
    callers gone?" check and `polls` how often the pipeline asked it (once per denoising step);
    `hold()` makes the next batches wait at their start, before any rendering, until `release()`."""

    HOLD_LIMIT_S = 60.0  # a test that never releases still ends

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.batches: list[list[Job]] = []
        self.abandoned: list[Callable[[], bool]] = []
        self.polls: list[int] = []
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()

    def __call__(self, model: Any, jobs: list[Job], should_stop: Callable[[], bool]) -> Any:
        with self._lock:
            index = len(self.batches)
            self.batches.append(list(jobs))
            self.abandoned.append(should_stop)
            self.polls.append(0)
        if not self._open.wait(self.HOLD_LIMIT_S):
            raise RuntimeError("EngineSpy held the engine too long")

        def counted() -> bool:
            self.polls[index] += 1
            return should_stop()

        return self.real(model, jobs, counted)

    @property
    def started(self) -> int:
        with self._lock:
            return len(self.batches)

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()


@pytest.fixture
def spy(gateway_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineSpy]:
    """Set up after gateway_factory, so it is released before the servers stop."""
    engine_spy = EngineSpy(runner_module.run_batch)
    monkeypatch.setattr(runner_module, "run_batch", engine_spy)
    yield engine_spy
    engine_spy.release()


@pytest.fixture
def local(gateway_factory: Factory, tiny_checkpoints: Any) -> RunningGateway:
    """A gateway serving only the tiny text-to-image checkpoint (no cloud key)."""
    running: RunningGateway = gateway_factory(local_model=str(tiny_checkpoints()))
    return running


@pytest.fixture
def client(local: RunningGateway) -> openai.OpenAI:
    return local.client()


# --- text-to-image ---------------------------------------------------------------------------


def test_generate_returns_a_png_of_the_requested_size(local: RunningGateway) -> None:
    """The local model renders at the asked size, and the response says who served it."""
    response = local.client().images.with_raw_response.generate(
        model=MODEL, prompt="a red cat", size="64x48", response_format="b64_json", extra_body=FAST
    )
    assert response.headers["x-imagegate-provider"] == "local"
    assert response.headers["x-imagegate-model"] == MODEL
    assert "x-imagegate-adjusted" not in response.headers
    result = response.parse()
    data = decode(result.data[0])
    assert fmt_of(data) == "png" and size_of(data) == (64, 48)
    assert result.usage is not None
    usage = result.usage.model_dump()
    assert (usage["provider"], usage["cost"], usage["images"]) == ("local", 0.0, 1)
    assert engine_of(local).stats.images == 1


def test_url_response_format_hosts_the_image(local: RunningGateway, client: openai.OpenAI) -> None:
    """response_format=url: the image is stored and served at a result URL."""
    result = generate(client, response_format="url", size="32x32")
    url = result.data[0].url
    assert url and url.startswith(local.url + "/v1/results/") and result.data[0].b64_json is None
    downloaded = httpx.get(url, timeout=30)
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert fmt_of(downloaded.content) == "png" and size_of(downloaded.content) == (32, 32)


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_output_format_is_honoured(client: openai.OpenAI, output_format: str) -> None:
    """The engine encodes jpeg and webp itself (native formats of the binding)."""
    result = generate(client, output_format=output_format, size="32x32")
    data = decode(result.data[0])
    assert fmt_of(data) == output_format and size_of(data) == (32, 32)
    assert result.model_extra is not None and result.model_extra["effective"]["output_format"] == output_format


def test_request_without_model_is_served_by_the_local_model(local: RunningGateway) -> None:
    """No cloud key and one local model: a request without `model` goes to the local model,
    not to the catalog's first (cloud) model. The SDK lets `model` out; plain HTTP too."""
    response = local.client().images.with_raw_response.generate(
        prompt="a red cat", response_format="b64_json", size="32x32", extra_body=FAST
    )
    assert response.headers["x-imagegate-model"] == MODEL
    assert response.headers["x-imagegate-provider"] == "local"
    assert size_of(decode(response.parse().data[0])) == (32, 32)

    raw = httpx.post(
        f"{local.url}/v1/images/generations",
        timeout=60,
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"prompt": "a red cat", "response_format": "b64_json", **FAST},
    )
    assert raw.status_code == 200, raw.text
    assert raw.headers["x-imagegate-model"] == MODEL
    assert raw.json()["usage"]["model"] == MODEL and raw.json()["usage"]["provider"] == "local"


# --- sizes -----------------------------------------------------------------------------------


def test_oversized_request_is_clamped_keeping_the_ratio(local: RunningGateway) -> None:
    """1000x500 is beyond max_side 64: clamped to 64x32 (same 2:1 shape), and reported."""
    response = local.client().images.with_raw_response.generate(
        model=MODEL, prompt="wide", size="1000x500", response_format="b64_json", extra_body=FAST
    )
    assert "size=1000x500->64x32" in response.headers["x-imagegate-adjusted"]
    result = response.parse()
    assert size_of(decode(result.data[0])) == (64, 32)
    assert result.model_extra is not None
    effective = result.model_extra["effective"]
    assert (effective["width"], effective["height"]) == (64, 32)
    assert {"param": "size", "requested": "1000x500", "applied": "64x32"} in result.model_extra["adjustments"]


def test_size_is_rounded_to_the_multiple_of_8(local: RunningGateway) -> None:
    """50x50 is not a multiple of 8: rendered at 48x48, and reported."""
    response = local.client().images.with_raw_response.generate(
        model=MODEL, prompt="square", size="50x50", response_format="b64_json", extra_body=FAST
    )
    assert "size=50x50->48x48" in response.headers["x-imagegate-adjusted"]
    assert size_of(decode(response.parse().data[0])) == (48, 48)


def test_aspect_ratio_gives_multiples_of_8_matching_effective(client: openai.OpenAI) -> None:
    """aspect_ratio=16:9 gives a wide image whose sides are multiples of 8, exactly the
    `effective` width and height of the response body."""
    result = generate(client, extra_body={"aspect_ratio": "16:9"})
    assert result.model_extra is not None
    effective = result.model_extra["effective"]
    width, height = effective["width"], effective["height"]
    assert width % 8 == 0 and height % 8 == 0 and width > height
    assert effective["aspect_ratio"] == "16:9"
    assert size_of(decode(result.data[0])) == (width, height)
    assert result.size == f"{width}x{height}"


# --- seeds and batching ----------------------------------------------------------------------


def test_same_seed_same_image_other_seed_other_image(client: openai.OpenAI) -> None:
    """A seed makes a render reproducible; another seed gives another image."""
    first = decode(generate(client, size="32x32", extra_body={"seed": 1234}).data[0])
    again = decode(generate(client, size="32x32", extra_body={"seed": 1234}).data[0])
    other = decode(generate(client, size="32x32", extra_body={"seed": 1235}).data[0])
    assert first == again
    assert rgb_pixels(first) != rgb_pixels(other)


def test_n_images_have_consecutive_seeds_in_one_batch(local: RunningGateway, client: openai.OpenAI) -> None:
    """n=2 with seed s returns the images of seeds s and s+1: the second one is a request of its
    own with seed s+1, so batching does not change an image (beyond the rounding tolerance of
    batch_tolerance.py: batched kernels round differently on AVX-512 CPUs)."""
    seed = 77
    pair = generate(client, n=2, size="32x32", extra_body={"seed": seed})
    assert len(pair.data) == 2
    first, second = (rgb_pixels(decode(item)) for item in pair.data)
    assert first != second
    assert engine_of(local).stats.batch_sizes[-1] == 2  # one forward pass for both
    alone_first = rgb_pixels(decode(generate(client, size="32x32", extra_body={"seed": seed}).data[0]))
    alone_second = rgb_pixels(decode(generate(client, size="32x32", extra_body={"seed": seed + 1}).data[0]))
    assert_same_render(alone_first, first)
    assert_same_render(alone_second, second)
    assert pair.model_extra is not None and pair.model_extra["effective"]["seed"] == seed


def test_n_3_is_one_forward_pass(local: RunningGateway, client: openai.OpenAI, spy: EngineSpy) -> None:
    """n images are one job with n seeds, rendered in one pipeline call."""
    engine = engine_of(local)
    before = engine.stats.batches
    result = generate(client, n=3, size="32x32", extra_body={"seed": 5})
    assert len(result.data) == 3
    assert engine.stats.batches == before + 1
    assert engine.stats.batch_sizes[-1] == 3
    assert [job.seeds for job in spy.batches[-1]] == [[5, 6, 7]]


def test_max_batch_images_bounds_n_too(gateway_factory: Factory, tiny_checkpoints: Any) -> None:
    """IMAGEGATE_LOCAL_MAX_BATCH_IMAGES is the most images in one forward pass (the memory
    bound), whether they come from several requests or from one request's n."""
    running = gateway_factory(local_model=str(tiny_checkpoints()), local_max_batch_images=2)
    result = generate(running.client(), n=3, size="32x32", extra_body={"seed": 5})
    assert len(result.data) == 3
    stats = engine_of(running).stats
    assert stats.images == 3
    assert stats.largest_batch <= 2, stats.batch_sizes


def test_concurrent_requests_share_a_forward_pass(local: RunningGateway, spy: EngineSpy) -> None:
    """While the engine is busy, compatible requests queue up and then run as one batch; each
    image is still the one its own seed gives on its own."""
    engine = engine_of(local)
    start_batches = engine.stats.batches
    spy.hold()
    with ThreadPoolExecutor(max_workers=5) as pool:
        busy = in_background(pool, local, size="32x32", extra_body={"seed": 1})
        wait_for(lambda: spy.started == 1, "the first request to occupy the engine")
        seeds = [100, 200, 300, 400]
        waiting = [in_background(pool, local, size="32x32", prompt="a red cat", extra_body={"seed": s}) for s in seeds]
        wait_for(lambda: engine.queued_images == 4, "four requests to queue up")
        spy.release()
        results = [future.result(timeout=WAIT_S) for future in waiting]
        busy.result(timeout=WAIT_S)

    images = [rgb_pixels(decode(r.data[0])) for r in results]
    assert len(set(images)) == 4  # distinct seeds, distinct images
    assert engine.stats.batches - start_batches == 2  # 5 requests, 2 forward passes
    assert engine.stats.batch_sizes[-2:] == [1, 4]
    assert sorted(seed for job in spy.batches[1] for seed in job.seeds) == seeds
    # Batched or not, a seed gives the same image (within the batch rounding tolerance).
    alone = generate(local.client(), size="32x32", prompt="a red cat", extra_body={"seed": 300})
    assert_same_render(rgb_pixels(decode(alone.data[0])), images[seeds.index(300)])


# --- edits -----------------------------------------------------------------------------------


def test_img2img_keeps_the_input_shape(local: RunningGateway, client: openai.OpenAI, spy: EngineSpy) -> None:
    """An edit without mask is img2img; with no size asked, it keeps the input's shape (3:2)."""
    source = png_bytes(Image.new("RGB", (60, 40), (200, 30, 30)))
    result = edit(client, png_file(source))
    assert result.model_extra is not None
    effective = result.model_extra["effective"]
    width, height = effective["width"], effective["height"]
    assert effective["aspect_ratio"] == "3:2" and effective["provider"] == "local"
    assert width > height and width % 8 == 0 and height % 8 == 0
    assert size_of(decode(result.data[0])) == (width, height)
    job = spy.batches[-1][0]
    assert job.task == "img2img" and job.image is not None and job.image.size == (width, height)
    assert "img2img" in engine_of(local).model._views


def test_mask_on_a_text2image_model_runs_inpainting(local: RunningGateway, client: openai.OpenAI) -> None:
    """With a mask, the same weights run the inpainting pipeline. Observable: a mask that keeps
    everything makes the prompt irrelevant (every latent is the input's), while img2img of the
    same input and seed follows the prompt."""
    source = png_bytes(Image.new("RGB", (32, 32), (200, 30, 30)))
    keep_all = mask_png(32, 32)
    masked = [
        decode(
            edit(client, png_file(source), prompt=p, mask=png_file(keep_all, "mask.png"), extra_body={"seed": 9}).data[
                0
            ]
        )
        for p in ("a dog", "a spaceship at night")
    ]
    plain = [
        decode(edit(client, png_file(source), prompt=p, extra_body={"seed": 9}).data[0])
        for p in ("a dog", "a spaceship at night")
    ]
    assert rgb_pixels(plain[0]) != rgb_pixels(plain[1])
    assert rgb_pixels(masked[0]) == rgb_pixels(masked[1])
    assert size_of(masked[0]) == (32, 32)
    assert "inpaint" in engine_of(local).model._views


def test_inpainting_checkpoint_needs_a_mask(gateway_factory: Factory, tiny_checkpoints: Any) -> None:
    """An inpainting checkpoint serves edits only, and only with a mask (400 on `mask`)."""
    running = gateway_factory(local_model=str(tiny_checkpoints("inpaint")))
    client = running.client()
    source = png_bytes(Image.new("RGB", (32, 32), (20, 160, 60)))
    error = expect_error(lambda: edit(client, png_file(source), model="local/tiny-inpaint"), 400)
    assert error.param == "mask"
    assert engine_of(running).stats.batches == 0  # refused before the engine
    result = edit(client, png_file(source), model="local/tiny-inpaint", mask=png_file(mask_png(32, 32, 16)))
    assert size_of(decode(result.data[0])) == (32, 32)
    error = expect_error(lambda: generate(client, model="local/tiny-inpaint"), 400)
    assert error.param == "model"


def test_instruct_checkpoint_edits_and_composites_the_mask(gateway_factory: Factory, tiny_checkpoints: Any) -> None:
    """An InstructPix2Pix checkpoint: edits work, text-to-image is a 400 on `model`, and a
    mask is applied by the gateway: the opaque (kept) half is the original, untouched."""
    running = gateway_factory(local_model=str(tiny_checkpoints("instruct")))
    client = running.client()
    red = (200, 30, 30)
    source = solid_png(32, 32, red)

    plain = decode(edit(client, png_file(source), model="local/tiny-pix2pix").data[0])
    assert size_of(plain) == (32, 32)
    error = expect_error(lambda: generate(client, model="local/tiny-pix2pix"), 400)
    assert error.param == "model"

    masked = decode(
        edit(
            client,
            png_file(source),
            model="local/tiny-pix2pix",
            mask=png_file(mask_png(32, 32, keep_left=16), "mask.png"),
        ).data[0]
    )
    image = open_image(masked).convert("RGB")
    assert image.size == (32, 32)
    kept = {image.getpixel((x, y)) for x in range(16) for y in range(32)}
    edited = {image.getpixel((x, y)) for x in range(16, 32) for y in range(32)}
    assert kept == {red}
    assert edited != {red}  # the model's output shows through where the mask is transparent

    # Its own knob reaches the pipeline; img2img's strength is not one of them.
    def with_image_guidance(scale: float) -> bytes:
        result = edit(
            client, png_file(source), model="local/tiny-pix2pix", extra_body={"seed": 3, "image_guidance_scale": scale}
        )
        return rgb_pixels(decode(result.data[0]))

    assert with_image_guidance(1.0) != with_image_guidance(4.0)
    error = expect_error(
        lambda: edit(client, png_file(source), model="local/tiny-pix2pix", extra_body={"strength": 0.5}), 400
    )
    assert error.param == "strength"


# --- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": "abc"}, "guidance_scale"),
        ({"generator": 1}, "generator"),  # a pipeline argument the engine owns
        ({"strength": 0.5}, "strength"),  # an edit-only parameter
    ],
)
def test_bad_generation_fields_are_400s(
    local: RunningGateway, client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    """OpenAI-style 400s naming the parameter; nothing reaches the engine."""
    error = expect_error(lambda: generate(client, size="32x32", extra_body=fields), 400)
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert engine_of(local).stats.batches == 0


def test_unknown_field_is_unsupported_parameter(client: openai.OpenAI) -> None:
    """A field neither the catalog nor the pipeline knows is refused, not silently dropped."""
    error = expect_error(lambda: generate(client, size="32x32", extra_body={"foo": 1}), 400)
    assert (error.param, error.code) == ("foo", "unsupported_parameter")
    assert "foo" in error.message


def test_pipeline_argument_passes_through(local: RunningGateway, client: openai.OpenAI, spy: EngineSpy) -> None:
    """A field the pipeline takes (eta) reaches it as is."""
    result = generate(client, size="32x32", extra_body={"eta": 0.0})
    assert size_of(decode(result.data[0])) == (32, 32)
    assert spy.batches[-1][0].extra == {"eta": 0.0}


def test_pipeline_argument_passes_through_an_edit_form(
    local: RunningGateway, client: openai.OpenAI, spy: EngineSpy
) -> None:
    """Edits are multipart forms, where every field is a string: a pass-through argument reaches
    the pipeline as the type it takes (eta: float), and a value that is not one is a 400."""
    source = solid_png(32, 32, (10, 10, 200))
    result = edit(client, png_file(source), extra_body={"eta": "0.5"})
    assert size_of(decode(result.data[0])) == (32, 32)
    [extra] = [job.extra for job in spy.batches[-1]]
    assert extra == {"eta": 0.5} and isinstance(extra["eta"], float)
    error = expect_error(lambda: edit(client, png_file(source), extra_body={"eta": "lots"}), 400)
    assert error.param == "eta"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"strength": 2}, "strength"),
        ({"strength": 0.1, "num_inference_steps": 2}, "strength"),  # int(2 * 0.1) = 0 denoising steps
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": "abc"}, "guidance_scale"),
    ],
)
def test_bad_edit_fields_are_400s(
    local: RunningGateway, client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    """Edit fields out of range, or a strength that leaves no denoising step: 400s naming the
    parameter, before the engine."""
    source = solid_png(32, 32, (10, 10, 200))
    error = expect_error(lambda: edit(client, png_file(source), extra_body=fields), 400)
    assert error.param == param
    assert engine_of(local).stats.batches == 0


def test_corrupt_image_is_a_400(local: RunningGateway, client: openai.OpenAI) -> None:
    """Bytes that are not a decodable image: a 400 on `image`, not an engine failure."""
    corrupt = solid_png(32, 32)[:40] + b"\x00garbage" * 8
    error = expect_error(lambda: edit(client, png_file(corrupt)), 400)
    assert error.param == "image"
    assert engine_of(local).stats.batches == 0


def test_mask_of_another_size_is_a_400(local: RunningGateway, client: openai.OpenAI) -> None:
    """A mask must match the image's size: a 400 on `mask`."""
    source = solid_png(32, 32)
    error = expect_error(lambda: edit(client, png_file(source), mask=png_file(mask_png(16, 16), "mask.png")), 400)
    assert error.param == "mask"
    assert engine_of(local).stats.batches == 0


# --- the queue and cancellation --------------------------------------------------------------


def test_full_queue_is_a_503_with_retry_after(gateway_factory: Factory, tiny_checkpoints: Any, spy: EngineSpy) -> None:
    """One image running and one queued fill a queue of one: the next request is refused at
    once with 503 engine_busy and a Retry-After; the accepted ones still complete."""
    running = gateway_factory(local_model=str(tiny_checkpoints()), local_max_queued_images=1, local_max_batch_images=1)
    engine = engine_of(running)
    spy.hold()
    with ThreadPoolExecutor(max_workers=2) as pool:
        busy = in_background(pool, running, size="32x32")
        wait_for(lambda: spy.started == 1, "the first request to occupy the engine")
        queued = in_background(pool, running, size="32x32")
        wait_for(lambda: engine.queued_images == 1, "the second request to queue")

        refused = expect_error(lambda: generate(running.client(), size="32x32"), 503)
        assert refused.code == "engine_busy"
        retry_after = refused.response.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert engine.stats.refused == 1

        spy.release()
        assert len(busy.result(timeout=WAIT_S).data) == 1
        assert len(queued.result(timeout=WAIT_S).data) == 1
    assert engine.stats.batches == 2 and engine.stats.images == 2


def test_client_disconnect_cancels_the_queued_job(local: RunningGateway, spy: EngineSpy) -> None:
    """A client that gives up while its job waits takes the job out of the queue: it is never
    rendered."""
    engine = engine_of(local)
    spy.hold()
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = in_background(pool, local, size="32x32")
        wait_for(lambda: spy.started == 1, "the first request to occupy the engine")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{local.url}/v1/images/generations",
                headers={"authorization": f"Bearer {API_KEY}"},
                json={"model": MODEL, "prompt": "never mind", "size": "32x32", **FAST},
                timeout=httpx.Timeout(30, read=1.0),
            )
        wait_for(lambda: engine.stats.cancelled == 1, "the abandoned job to be cancelled")
        assert engine.queued_images == 0
        spy.release()
        busy.result(timeout=WAIT_S)
    assert engine.stats.batches == 1 and engine.stats.images == 1
    assert [job.prompt for batch in spy.batches for job in batch] == ["a red cat"]


def test_client_leaving_a_running_batch_stops_it_after_one_step(
    local: RunningGateway, client: openai.OpenAI, spy: EngineSpy
) -> None:
    """When every caller of the running batch has gone, the denoising loop stops after the
    current step (1 of 50 here), and the next request renders normally."""
    reference = rgb_pixels(decode(generate(client, size="32x32", extra_body={"seed": 4}).data[0]))
    engine = engine_of(local)
    spy.hold()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{local.url}/v1/images/generations",
            headers={"authorization": f"Bearer {API_KEY}"},
            json={"model": MODEL, "prompt": "long", "size": "64x64", "num_inference_steps": 50},
            timeout=httpx.Timeout(30, read=1.0),
        )
    wait_for(lambda: spy.started == 2, "the long request to reach the engine")
    wait_for(spy.abandoned[1], "the server to notice the disconnect")
    spy.release()
    wait_for(lambda: engine.stats.batches == 2, "the abandoned batch to end")
    assert spy.polls[1] == 1  # stopped at the first step's end, not after 50
    assert (engine.stats.interrupted, engine.stats.cancelled) == (1, 0)
    # The interruption does not stick to the pipeline: the same request renders the same image.
    again = rgb_pixels(decode(generate(client, size="32x32", extra_body={"seed": 4}).data[0]))
    assert again == reference
    assert spy.polls[2] == FAST["num_inference_steps"]


# --- the model list --------------------------------------------------------------------------


def list_models(running: RunningGateway) -> dict[str, Any]:
    response = httpx.get(f"{running.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_models_list_the_local_model(local: RunningGateway) -> None:
    """GET /v1/models shows the local model as available, with its pixel limits."""
    body = list_models(local)
    assert "notice" not in body
    card = next(m for m in body["data"] if m["id"] == MODEL)
    assert card["available"] is True
    assert card["owned_by"] == "local"
    assert card["pixel_limits"]["multiple_of"] == 8 and card["pixel_limits"]["max_side"] == 64
    assert [p["id"] for p in card["providers"]] == ["local"]
    # The SDK reads the same list.
    assert MODEL in {m.id for m in local.client().models.list()}


def test_no_provider_at_all_gives_a_notice(gateway_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing configured: the model list and the server log say how to fix it."""
    caplog.set_level(logging.WARNING, logger="imagegate")
    running = gateway_factory()
    body = list_models(running)
    assert "IMAGEGATE_LOCAL_MODEL" in body["notice"]
    assert not any(m["available"] for m in body["data"])
    logged = [r.getMessage() for r in caplog.records if r.name == "imagegate" and r.levelno == logging.WARNING]
    assert any("IMAGEGATE_LOCAL_MODEL" in message for message in logged), logged


# --- hub ids and bad configurations ----------------------------------------------------------


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """huggingface_hub reads these at import into its constants: set both."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))


def test_hub_id_is_served_from_the_cache_with_its_preset(
    gateway_factory: Factory, tiny_checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: EngineSpy
) -> None:
    """A hub id resolves offline through the hub cache, is served as local/<name>, and a
    "turbo" name gets the turbo defaults (1 step, no guidance)."""
    cache = tmp_path / "hub"
    build_fake_hub_cache(cache, "acme/tiny-sd-turbo", tiny_checkpoints())
    offline_hub(monkeypatch, cache)
    running = gateway_factory(local_model="acme/tiny-sd-turbo")

    card = next(m for m in list_models(running)["data"] if m["id"] == "local/tiny-sd-turbo")
    assert card["available"] is True
    assert card["providers"][0]["upstream_model"] == "acme/tiny-sd-turbo"
    binding = gateway_of(running).catalog.get("local/tiny-sd-turbo")
    assert binding is not None
    assert binding.providers["local"].defaults["t2i"]["num_inference_steps"] == 1

    result = running.client().images.generate(
        model="local/tiny-sd-turbo", prompt="fast", size="32x32", response_format="b64_json"
    )
    assert size_of(decode(result.data[0])) == (32, 32)
    job = spy.batches[-1][0]
    assert (job.steps, job.guidance_scale) == (1, 0.0)


@pytest.fixture
def bad_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Three unusable IMAGEGATE_LOCAL_MODEL values, by what is wrong with them."""
    not_diffusers = tmp_path / "just-a-folder"
    not_diffusers.mkdir()
    (not_diffusers / "weights.bin").write_bytes(b"\x00" * 16)
    empty_cache = tmp_path / "empty-hub"
    empty_cache.mkdir()
    offline_hub(monkeypatch, empty_cache)
    return {
        "missing directory": str(tmp_path / "no-such-model"),
        "not diffusers": str(not_diffusers),
        "uncached hub id": "acme/never-downloaded",
    }


@pytest.mark.parametrize("case", ["missing directory", "not diffusers", "uncached hub id"])
def test_bad_local_model_fails_clearly(bad_sources: dict[str, str], tmp_path: Path, case: str) -> None:
    """The gateway refuses to start with an error naming the configured source."""
    source = bad_sources[case]
    with pytest.raises(LocalModelError) as info:
        Gateway(Settings(local_model=source, data_dir=tmp_path / "data"))
    assert source in info.value.message


def cli_runner() -> CliRunner:
    """stdout and stderr kept apart, whatever the installed click (8.2+ separates by default)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


@pytest.mark.parametrize("command", [["models"], ["generate", "a cat", "--model", MODEL]])
def test_cli_with_a_bad_local_model_exits_with_the_message(
    bad_sources: dict[str, str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """The CLI reports a bad IMAGEGATE_LOCAL_MODEL as an error message, not a traceback."""
    source = bad_sources["missing directory"]
    monkeypatch.setenv("IMAGEGATE_LOCAL_MODEL", source)
    result = cli_runner().invoke(cli, command)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert source in "".join(result.stderr.split())  # rich wraps long lines


# --- the CLI in-process ----------------------------------------------------------------------


def test_cli_generates_with_the_local_model(
    tiny_checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`imagegate generate` runs the local engine in-process and writes the image."""
    monkeypatch.setenv("IMAGEGATE_LOCAL_MODEL", str(tiny_checkpoints()))
    out = tmp_path / "out.png"
    result = cli_runner().invoke(
        cli,
        [
            "generate",
            "a cat",
            "--model",
            MODEL,
            "--size",
            "32x32",
            "--seed",
            "3",
            "--param",
            "num_inference_steps=2",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"
    assert fmt_of(out.read_bytes()) == "png" and size_of(out.read_bytes()) == (32, 32)
    assert f"{MODEL} via local" in result.stderr
