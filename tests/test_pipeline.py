"""The request pipeline with no sockets: FakeProviders behind a real router, an in-memory result
store and usage sink. Stages and their events, fallback over the inputs already loaded, partial
n, adjustments in their documented order, and usage recorded whenever upstream calls were paid."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagegate.config import Settings
from imagegate.errors import (
    InvalidRequest,
    StorageFull,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.fetch import ImageFetcher
from imagegate.pipeline import ImageJob, PipelineEvent
from imagegate.resilience import CircuitBreaker
from imagegate.router import Router
from imagegate.service import ImageService
from imagegate.storage import StoredResult
from imagegate.usage import UsageRecord

from .fakes.images import solid_png
from .fakes.provider import FALLBACK_PARAM, FakeProvider, model_entry, result, small_catalog

PNG = solid_png(64, 64, (200, 100, 50))
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
SERVE_STAGES = ["validate", "plan", "admit", "load_inputs", "layout", "dispatch"]


class MemoryStore:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_after: int | None = None  # StorageFull once this many files are stored

    def put(self, data: bytes, content_type: str) -> str:
        if self.fail_after is not None and len(self.files) >= self.fail_after:
            raise StorageFull("full")
        name = f"r{len(self.files)}.png"
        self.files[name] = data
        return name

    def get(self, name: str) -> StoredResult | None:
        return None

    def delete(self, name: str) -> None:
        self.files.pop(name, None)

    def purge_expired(self) -> int:
        return 0

    def expire_at(self, names: list[str], expires_at: float) -> None:
        pass

    def public_url(self, name: str) -> str | None:
        return None

    def name_of(self, url: str) -> str | None:
        return None


class UsageList:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def record(self, usage: UsageRecord) -> None:
        self.records.append(usage)


class CountingFetcher(ImageFetcher):
    def __init__(self) -> None:
        super().__init__(allow_private=False, timeout_seconds=5, concurrency_per_key=4)
        self.urls: list[str] = []
        self.delay = 0.0

    async def fetch(self, url: str, *, param: str, max_bytes: int, key_id: str | None) -> bytes:
        self.urls.append(url)
        await asyncio.sleep(self.delay)
        return await super().fetch(url, param=param, max_bytes=max_bytes, key_id=key_id)


class Harness:
    """An ImageService over `m` (gemini, then fal) whose fallback `backup` is served by openai."""

    def __init__(
        self, tmp_path: Path, *, m: dict[str, Any] | None = None, backup: dict[str, Any] | None = None, **settings: Any
    ) -> None:
        self.settings = Settings(
            data_dir=tmp_path / "data",
            public_url="http://gw.test",
            retry_attempts=1,
            retry_backoff_seconds=0.0,
            **settings,
        )
        primary = model_entry(
            "m",
            aliases=["m-alias"],
            fallback_model="backup",
            **{
                "providers": {"gemini": {}, "fal": {"max_images_per_call": 4}},
                "parameters": {"allow_fallback_model": FALLBACK_PARAM},
                **(m or {}),
            },
        )
        fallback = model_entry("backup", **{"providers": {"openai": {"max_images_per_call": 4}}, **(backup or {})})
        self.fakes = {p: FakeProvider(p) for p in ("gemini", "fal", "openai")}
        self.router = Router(
            small_catalog(primary, fallback), dict(self.fakes), breaker=CircuitBreaker(threshold=100, cooldown=60.0)
        )
        self.store = MemoryStore()
        self.usage = UsageList()
        self.fetcher = CountingFetcher()
        self.service = ImageService(self.settings, self.router, self.store, self.usage, self.fetcher)

    async def create(
        self,
        mode: str = "t2i",
        on_event: Callable[[PipelineEvent], None] | None = None,
        images: list[bytes | str] | None = None,
        **fields: Any,
    ) -> Any:
        job = ImageJob(
            mode=mode,
            params={"model": "m", "prompt": "a fox", **fields},  # type: ignore[arg-type]
            images=images or [],
            request_id="req-1",
        )
        return await self.service.create(job, on_event=on_event)

    def capacity_everywhere(self) -> None:
        self.fakes["gemini"].enqueue(UpstreamUnavailable("gemini busy"))
        self.fakes["fal"].enqueue(UpstreamUnavailable("fal busy"))


def stages(events: list[PipelineEvent]) -> list[str]:
    return [e.stage for e in events if e.kind == "stage_started"]


async def test_a_request_runs_the_stages_in_order_and_tells_its_listeners(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    events: list[PipelineEvent] = []
    outcome = await h.create(on_event=events.append, n=2, response_format="url")
    assert [(e.kind, e.stage) for e in events] == [
        ("stage_started", "resolve_model"),
        ("stage_finished", "resolve_model"),
        *[(kind, stage) for stage in SERVE_STAGES for kind in ("stage_started", "stage_finished")],
        ("stage_started", "record_usage"),
        ("stage_finished", "record_usage"),
        ("stage_started", "finish"),
        ("image_finished", "finish"),
        ("image_finished", "finish"),
        ("stage_finished", "finish"),
        *[(kind, stage) for stage in ("host", "render") for kind in ("stage_started", "stage_finished")],
    ]
    finished = [e for e in events if e.kind == "image_finished"]
    assert sorted(e.index for e in finished if e.index is not None) == [0, 1]
    assert all(e.image is not None and e.image.width == 64 for e in finished)
    assert {e.request_id for e in events} == {"req-1"} and events[-1].model == "m"
    assert [o.url for o in outcome.images] == ["http://gw.test/v1/results/r0.png", "http://gw.test/v1/results/r1.png"]


async def test_the_jobs_own_listener_sees_the_events_too(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    seen: list[str] = []
    job = ImageJob(mode="t2i", params={"model": "m", "prompt": "p"}, on_event=lambda e: seen.append(e.kind))
    await h.service.create(job)
    assert seen[0] == "stage_started" and seen.count("image_finished") == 1


async def test_an_alias_is_reported_as_sent_and_usage_is_recorded(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.fakes["gemini"].enqueue(result(1, input_tokens=3, output_tokens=5))
    outcome = await h.create(model="m-alias", user="u1")
    assert (outcome.model, outcome.provider, outcome.input_tokens, outcome.output_tokens) == ("m-alias", "gemini", 3, 5)
    (usage,) = h.usage.records
    assert (usage.model, usage.provider, usage.images, usage.user, usage.request_id) == (
        "m-alias",
        "gemini",
        1,
        "u1",
        "req-1",
    )


async def test_a_mode_the_model_lacks_is_refused_before_any_call(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"modes": ["t2i"]})
    with pytest.raises(InvalidRequest) as excinfo:
        await h.create("edit", images=[PNG])
    assert excinfo.value.param == "model" and h.fakes["gemini"].history == []


async def test_adjustments_come_once_each_in_the_documented_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"providers": {"gemini": {}}})
    gemini = h.fakes["gemini"]
    gemini.enqueue(result(1, 60, 60))
    gemini.enqueue(UpstreamError("boom"))
    gemini.enqueue(result(1, 60, 60))
    outcome = await h.create(n=3, aspect_ratio="4:3", quality="high", output_compression=50, response_format="b64_json")
    assert [(a.param, a.applied) for a in outcome.adjustments] == [
        ("aspect_ratio", outcome.adjustments[0].applied),  # LAYOUT: 4:3 is not in the table
        ("quality", "not applied (model m lacks it)"),  # PARAMETERS: once, though two calls served it
        ("n", "2 (1 upstream calls failed)"),  # COUNT
        ("size", "60x60 (as produced)"),  # DIMENSIONS
        ("output_compression", "ignored (png is lossless)"),  # OUTPUT
    ]
    assert h.usage.records[0].images == 2


async def test_the_fail_policy_refuses_a_partial_answer_but_records_what_was_paid(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"providers": {"gemini": {}}}, n_failure_policy="fail")
    h.fakes["gemini"].enqueue(result(1))
    h.fakes["gemini"].enqueue(UpstreamError("boom"))
    with pytest.raises(UpstreamError):
        await h.create(n=2)
    assert [(u.images, u.provider) for u in h.usage.records] == [(1, "gemini")]


async def test_usage_is_recorded_when_the_deadline_strikes_after_a_paid_call(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"providers": {"gemini": {}}}, request_timeout_seconds=0.2)
    h.fakes["gemini"].enqueue(result(1))
    h.fakes["gemini"].enqueue(result(1), delay=30)
    with pytest.raises(UpstreamTimeout):
        await h.create(n=2)
    assert [u.images for u in h.usage.records] == [1]


async def test_the_deadline_covers_fetching_the_inputs(tmp_path: Path) -> None:
    h = Harness(tmp_path, request_timeout_seconds=0.2)
    h.fetcher.delay = 30
    with pytest.raises(UpstreamTimeout) as excinfo:
        await h.create("edit", images=[PNG_URI])
    assert "while fetching its input images" in excinfo.value.message
    assert h.fakes["gemini"].history == [] and h.usage.records == []


async def test_usage_is_recorded_when_the_client_goes_away_after_a_paid_call(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"providers": {"gemini": {}}})
    h.fakes["gemini"].enqueue(result(1))
    h.fakes["gemini"].enqueue(result(1), delay=30)
    task = asyncio.create_task(h.create(n=2))
    while len(h.fakes["gemini"].history) < 2:  # both calls sent; the first answered at once
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [u.images for u in h.usage.records] == [1]


async def test_usage_is_recorded_when_the_images_cannot_be_stored(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.store.fail_after = 1
    with pytest.raises(StorageFull):
        await h.create(n=2, response_format="url")
    assert [u.images for u in h.usage.records] == [2]
    assert h.store.files == {}  # all or none


async def test_nothing_is_recorded_when_no_call_made_images(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"providers": {"gemini": {}}})
    h.fakes["gemini"].enqueue(UpstreamError("boom"))
    with pytest.raises(UpstreamError):
        await h.create()
    assert h.usage.records == []


# --- allow_fallback_model ----------------------------------------------------------------------


async def test_a_fallback_replans_over_the_inputs_already_loaded(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.capacity_everywhere()
    events: list[PipelineEvent] = []
    outcome = await h.create("edit", on_event=events.append, images=[PNG_URI], allow_fallback_model=True)
    assert (outcome.model, outcome.provider) == ("backup", "openai")
    assert h.fetcher.urls == [PNG_URI]  # read once, for both models
    (sent,) = h.fakes["openai"].history
    assert sent.images[0].data == PNG and sent.upstream_model == "openai/backup"
    assert stages(events) == [
        "resolve_model",
        *SERVE_STAGES,
        "fallback",
        *SERVE_STAGES,
        "record_usage",
        "finish",
        "host",
        "render",
    ]
    assert [e.model for e in events if e.kind == "fallback"] == ["backup"]
    assert outcome.adjustments[0].param == "model"
    assert (outcome.adjustments[0].requested, outcome.adjustments[0].applied) == ("m", "backup (allow_fallback_model)")
    assert [(u.model, u.provider) for u in h.usage.records] == [("backup", "openai")]


async def test_a_fallback_leaves_out_what_the_fallback_model_lacks(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        m={
            "parameters": {
                "allow_fallback_model": FALLBACK_PARAM,
                "style_preset": {"type": "string", "description": "m's own", "t2i": "supported", "edit": "supported"},
            }
        },
    )
    h.capacity_everywhere()
    outcome = await h.create(allow_fallback_model=True, style_preset="noir")
    assert [(a.param, a.applied) for a in outcome.adjustments[:2]] == [
        ("model", "backup (allow_fallback_model)"),
        ("style_preset", "not applied (fallback model backup lacks it)"),
    ]
    assert "style_preset" not in h.fakes["openai"].history[0].extra


async def test_the_fallback_checks_the_loaded_inputs_against_its_own_limits(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"max_input_images": 2}, backup={"max_input_images": 1})
    h.capacity_everywhere()
    with pytest.raises(UpstreamUnavailable) as excinfo:
        await h.create("edit", images=[PNG, PNG], allow_fallback_model=True)
    assert excinfo.value.code == "upstream_at_capacity" and "at most 1 images" in excinfo.value.message
    assert h.fakes["openai"].history == []


async def test_a_failing_fallback_is_a_503_naming_both_models(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.capacity_everywhere()
    h.fakes["openai"].enqueue(UpstreamError("openai broke"))
    with pytest.raises(UpstreamUnavailable) as excinfo:
        await h.create(allow_fallback_model=True)
    assert excinfo.value.code == "upstream_at_capacity"
    assert "'m'" in excinfo.value.message and "'backup'" in excinfo.value.message
    assert "openai broke" in excinfo.value.message


async def test_no_fallback_unless_every_failure_is_capacity(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.fakes["gemini"].enqueue(UpstreamUnavailable("busy"))
    h.fakes["fal"].enqueue(UpstreamError("broken"))
    with pytest.raises(UpstreamError) as excinfo:
        await h.create(allow_fallback_model=True)
    assert excinfo.value.message == "broken" and h.fakes["openai"].history == []


async def test_no_fallback_unless_the_client_allows_it(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.capacity_everywhere()
    with pytest.raises(UpstreamUnavailable) as excinfo:
        await h.create()
    assert excinfo.value.message == "fal busy" and h.fakes["openai"].history == []


PARTIAL_BINDING = {"parameters": {"partial_images": {"handling": "emulated", "how": "thought images"}}}


def sends_partials(*colors: tuple[int, int, int]) -> Callable[[Any], Any]:
    """An answer that first reports one interim image per colour, as a streaming upstream does."""

    def answer(request: Any) -> Any:
        assert request.on_partial is not None, "a streamed request with partial_images gets a listener"
        for color in colors:
            request.on_partial(result(1, color=color).images[0])
        return result(request.n)

    return answer


async def test_interim_images_become_partial_events_before_the_images(tmp_path: Path) -> None:
    h = Harness(tmp_path, m={"providers": {"gemini": PARTIAL_BINDING}})
    h.fakes["gemini"].enqueue(sends_partials((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    events: list[PipelineEvent] = []
    outcome = await h.create(on_event=events.append, stream=True, partial_images=2, output_format="jpeg")
    partials = [e for e in events if e.kind == "image_partial"]
    assert [e.index for e in partials] == [0, 1]  # at most partial_images, in arrival order
    assert all(e.stage == "dispatch" and e.image is not None and e.image.format == "jpeg" for e in partials)
    kinds = [(e.kind, e.stage) for e in events]
    assert kinds.index(("image_partial", "dispatch")) < kinds.index(("stage_finished", "dispatch"))
    assert len(outcome.images) == 1 and outcome.adjustments == []


async def test_no_listener_for_a_provider_without_partials_or_without_stream(tmp_path: Path) -> None:
    h = Harness(tmp_path)  # gemini's binding here declares no partial_images
    events: list[PipelineEvent] = []
    outcome = await h.create(on_event=events.append, stream=True, partial_images=2)
    assert h.fakes["gemini"].history[-1].on_partial is None
    assert [(a.param, a.applied) for a in outcome.adjustments] == [
        ("partial_images", "not applied (provider gemini sends no partial images)")
    ]
    h = Harness(tmp_path, m={"providers": {"gemini": PARTIAL_BINDING}})
    outcome = await h.create(on_event=events.append, partial_images=2)
    assert h.fakes["gemini"].history[-1].on_partial is None
    assert [(a.param, a.applied) for a in outcome.adjustments] == [
        ("partial_images", "not applied (only with stream: true)")
    ]


async def test_a_broken_interim_image_is_skipped(tmp_path: Path) -> None:
    from imagegate.imaging import ImageBytes
    from imagegate.providers import ProviderImage

    def answer(request: Any) -> Any:
        request.on_partial(ProviderImage(ImageBytes(b"\x89PNG\r\n\x1a\nnot really"), "image/png"))
        request.on_partial(result(1).images[0])
        return result(request.n)

    h = Harness(tmp_path, m={"providers": {"gemini": PARTIAL_BINDING}})
    h.fakes["gemini"].enqueue(answer)
    events: list[PipelineEvent] = []
    await h.create(on_event=events.append, stream=True, partial_images=3)
    assert [e.index for e in events if e.kind == "image_partial"] == [1]  # the good one keeps its place
