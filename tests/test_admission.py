"""The pipeline's admit stage and the dispatcher's upstream budgets, with FakeProviders (see
tests/test_pipeline.py's Harness): a refused request calls no upstream, a budget is reserved from
the expected cost and settled with the real one however the request ends, async jobs take their
rate limits at submission, and a provider out of upstream budget spreads or queues its calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from imagegate.errors import (
    InsufficientQuota,
    ModelNotAllowed,
    RateLimitExceeded,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.limits import Limits, LocalLimitState
from imagegate.pipeline import ImageJob
from imagegate.policy import Budget, KeyPolicy, RateLimits
from imagegate.service import ImageService

from .fakes.provider import result
from .test_pipeline import Harness

GEMINI_PRICE = {"per_image": 0.04}  # the first candidate's price: what a request is expected to cost


class Admission(Harness):
    """The harness's service with limits, and one key ("k1") whose policy a test sets."""

    def __init__(self, tmp_path: Path, policy: KeyPolicy | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("m", {"providers": {"gemini": {"price": GEMINI_PRICE}, "fal": {"max_images_per_call": 4}}})
        upstream = kwargs.pop("upstream", None)
        super().__init__(tmp_path, **kwargs)
        self.policy = policy
        self.limits = Limits(LocalLimitState(), self._spent, upstream)
        self.spent_before = 0.0
        self.service = ImageService(
            self.settings,
            self.router,
            self.store,
            self.usage,
            self.fetcher,
            limits=self.limits,
            policy_for=lambda key_id: self.policy if key_id == "k1" else None,
        )

    async def _spent(self, key_id: str, since: float) -> float:
        return self.spent_before

    def job(self, **fields: Any) -> ImageJob:
        return ImageJob(mode="t2i", params={"model": "m", "prompt": "a fox", **fields}, request_id="r", key_id="k1")

    async def serve(self, **fields: Any) -> Any:
        outcome = await self.service.create(self.job(**fields))
        await self.limits.drain()
        return outcome

    def calls(self) -> int:
        return sum(len(fake.history) for fake in self.fakes.values())


def policy(**fields: Any) -> KeyPolicy:
    return KeyPolicy(key_id="k1", name="k1", **fields)


async def test_over_the_rate_limit_no_upstream_is_called(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(rate_limits=RateLimits(requests_per_minute=1)))
    await h.serve()
    with pytest.raises(RateLimitExceeded) as excinfo:
        await h.serve()
    assert excinfo.value.retry_after is not None and excinfo.value.retry_after > 0
    assert h.calls() == 1 and len(h.usage.records) == 1


async def test_a_gateway_without_a_policy_for_the_caller_limits_nothing(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy=None)
    for _ in range(3):
        await h.serve(n=2)
    assert h.calls() == 6  # gemini makes one image a call


async def test_a_model_off_the_allow_list_is_a_403_before_any_call(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(models=("backup",)))
    with pytest.raises(ModelNotAllowed) as excinfo:
        await h.serve()
    assert excinfo.value.param == "model" and h.calls() == 0
    h.policy = policy(models=("m-alias",))
    await h.serve()  # listed by its alias, named by its id
    assert h.calls() == 1


async def test_the_expected_cost_is_price_times_n_and_over_budget_calls_nothing(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(budget=Budget(usd_per_day=0.1)))
    with pytest.raises(InsufficientQuota):
        await h.serve(n=3)  # 3 x 0.04 > 0.1
    assert h.calls() == 0
    await h.serve(n=2)  # 0.08 fits


async def test_the_ledger_spent_counts_against_the_budget(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(budget=Budget(usd_per_month=1.0)))
    h.spent_before = 0.98  # what this key's usage rows already add up to, this month
    with pytest.raises(InsufficientQuota):
        await h.serve()
    assert h.calls() == 0


async def test_the_reservation_is_settled_with_the_real_cost(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(budget=Budget(usd_per_day=0.1)))
    h.fakes["gemini"].enqueue(result(1))
    h.fakes["gemini"].enqueue(UpstreamError("boom"))
    h.fakes["fal"].enqueue(UpstreamError("boom too"))
    outcome = await h.serve(n=2)  # expected 0.08; one image made: 0.04
    assert outcome.cost == pytest.approx(0.04) and h.usage.records[0].cost == pytest.approx(0.04)
    await h.serve()  # 0.04 + 0.04 fits only if 0.04, not the 0.08 held, was settled
    with pytest.raises(InsufficientQuota):
        await h.serve()


async def test_a_failed_request_that_paid_nothing_releases_its_reservation(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(budget=Budget(usd_per_day=0.04)))
    h.fakes["gemini"].enqueue(UpstreamError("boom"))
    h.fakes["fal"].enqueue(UpstreamError("boom"))
    with pytest.raises(UpstreamError):
        await h.serve()
    await h.limits.drain()
    await h.serve()  # the whole budget is there again


async def test_a_cancelled_request_settles_what_its_finished_calls_cost(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(budget=Budget(usd_per_day=0.1)))
    h.fakes["gemini"].enqueue(result(1))
    h.fakes["gemini"].enqueue(result(1), delay=30)  # the client goes away during this call
    task = asyncio.create_task(h.service.create(h.job(n=2)))
    while not h.fakes["gemini"].history or len(h.fakes["gemini"].history) < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await h.limits.drain()
    assert [r.cost for r in h.usage.records] == [pytest.approx(0.04)]  # one image was paid
    await h.serve()  # 0.04 + 0.04: the 0.08 held was replaced by the 0.04 paid
    with pytest.raises(InsufficientQuota):
        await h.serve()


async def test_an_async_job_takes_its_rate_limit_when_submitted_not_again_when_run(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(rate_limits=RateLimits(requests_per_minute=1)))
    job = h.job()
    await h.service.check(job)
    assert h.calls() == 0
    job.rate_checked = False  # as the job runner rebuilds it ...
    stored = h.job()
    stored.rate_checked = True  # ... from what was submitted (jobs.JobRunner._image_job)
    await h.service.create(stored)
    assert h.calls() == 1
    with pytest.raises(RateLimitExceeded):
        await h.service.check(h.job())


async def test_a_fallback_is_not_counted_twice(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(rate_limits=RateLimits(requests_per_minute=1), budget=Budget(usd_per_day=0.05)))
    h.capacity_everywhere()
    outcome = await h.serve(allow_fallback_model=True)
    assert outcome.model == "backup"
    assert [r.cost for r in h.usage.records] == [pytest.approx(0.01)]  # the backup's listed price
    h.policy = policy(budget=Budget(usd_per_day=0.05))
    await h.serve()  # 0.01 + 0.04 = 0.05: the first model's 0.04 hold was released, not kept


async def test_a_key_not_allowed_the_fallback_model_gets_the_capacity_error(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(models=("m",)))
    h.capacity_everywhere()
    with pytest.raises(UpstreamUnavailable) as excinfo:
        await h.serve(allow_fallback_model=True)
    assert "gemini busy" in excinfo.value.message or "fal busy" in excinfo.value.message
    assert h.fakes["openai"].history == []


async def test_a_fallback_over_the_budget_is_insufficient_quota_not_capacity(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy(budget=Budget(usd_per_day=0.05)), backup={"price": {"per_image": 0.5}})
    h.capacity_everywhere()
    with pytest.raises(InsufficientQuota):
        await h.serve(allow_fallback_model=True)
    assert h.fakes["openai"].history == []


# --- upstream budgets ----------------------------------------------------------------------------


async def test_a_provider_out_of_upstream_budget_hands_its_calls_to_the_next(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy=None, upstream={"gemini": RateLimits(images_per_minute=1)})
    await h.serve(n=3)  # gemini: one image a call, one image of budget
    assert (len(h.fakes["gemini"].history), sum(r.n for r in h.fakes["fal"].history)) == (1, 2)
    await h.serve()
    assert (len(h.fakes["gemini"].history), len(h.fakes["fal"].history)) == (1, 3)


async def test_spreading_is_not_a_failure_under_the_fail_policy(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy=None, upstream={"gemini": RateLimits(images_per_minute=1)}, n_failure_policy="fail")
    outcome = await h.serve(n=2)
    assert len(outcome.images) == 2 and outcome.adjustments == []


async def test_the_last_provider_waits_for_room_in_its_budget(tmp_path: Path) -> None:
    h = Admission(tmp_path, policy=None, m={"providers": {"gemini": {}}}, upstream={"gemini": RateLimits(120)})
    for _ in range(120):  # the minute's allowance is taken: the next call has room in 0.5 s
        assert await h.limits.take_upstream("gemini", 1) == 0
    refusals: list[float] = []
    take = h.limits.take_upstream

    async def counted(provider_id: str, images: int) -> float:
        wait = await take(provider_id, images)
        refusals.extend([wait] if wait > 0 else [])
        return wait

    h.limits.take_upstream = counted  # type: ignore[method-assign]
    await h.serve()
    assert len(h.fakes["gemini"].history) == 1 and refusals  # it queued, then was sent


async def test_queueing_for_upstream_budget_ends_at_the_deadline(tmp_path: Path) -> None:
    h = Admission(
        tmp_path,
        policy=None,
        m={"providers": {"gemini": {}}},
        upstream={"gemini": RateLimits(requests_per_minute=1)},
        request_timeout_seconds=0.3,
    )
    await h.limits.take_upstream("gemini", 1)
    with pytest.raises(UpstreamTimeout):
        await h.serve()
    assert h.fakes["gemini"].history == []
