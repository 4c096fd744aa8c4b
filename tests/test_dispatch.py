"""The dispatcher with no sockets: n split into calls, seeds, retries, failover, the breaker,
the deadline, and the paid list a cancelled run leaves behind. Backoff is 0 throughout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from imagegate.config import Settings
from imagegate.dispatch import SEED_RANGE, CallPlan, Dispatcher, Served
from imagegate.errors import ContentPolicyViolation, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from imagegate.normalize import Layout
from imagegate.params import normalize_params
from imagegate.resilience import CircuitBreaker
from imagegate.router import Candidate, Router, plan_candidates

from .fakes.provider import FakeProvider, model_entry, result, small_catalog

LAYOUT = Layout("1:1", "1K", 64, 64)
PLAN = CallPlan("t2i", LAYOUT, (), None)


class Setup:
    """One model served by the given providers (binding fields per provider), each a FakeProvider."""

    def __init__(
        self,
        tmp_path: Path,
        bindings: dict[str, dict[str, Any]],
        *,
        fields: dict[str, Any] | None = None,
        retry_attempts: int = 1,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.settings = Settings(data_dir=tmp_path / "data", retry_attempts=retry_attempts, retry_backoff_seconds=0.0)
        self.fakes = {p: FakeProvider(p) for p in bindings}
        self.breaker = breaker or CircuitBreaker(threshold=100, cooldown=60.0)
        entry = model_entry("m", providers=bindings)
        router = Router(small_catalog(entry), dict(self.fakes), breaker=self.breaker)
        params = normalize_params({"prompt": "p", **(fields or {})}, model=entry, mode="t2i")
        self.candidates: list[Candidate] = plan_candidates(params, router.routes("m"), strict=False, has_mask=False)
        self.dispatcher = Dispatcher(self.settings, self.breaker)

    async def run(self, n: int, **kwargs: Any) -> tuple[list[Served], list[Any]]:
        return await self.dispatcher.run(self.candidates, PLAN, n, **kwargs)


def images_by(served: list[Served]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in served:
        counts[item.route.provider_id] = counts.get(item.route.provider_id, 0) + len(item.result.images)
    return counts


async def test_n_is_split_into_calls_of_at_most_max_images_per_call(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"fal": {"max_images_per_call": 2}}, fields={"seed": 100})
    served, errors = await setup.run(5)
    history = setup.fakes["fal"].history
    assert sorted((r.n, r.seed) for r in history) == [(1, 104), (2, 100), (2, 102)]
    assert images_by(served) == {"fal": 5} and errors == []


async def test_seeds_wrap_inside_the_int32_range(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}}, fields={"seed": SEED_RANGE - 1})
    await setup.run(2)
    assert sorted(r.seed for r in setup.fakes["gemini"].history if r.seed is not None) == [0, SEED_RANGE - 1]


async def test_the_native_output_format_and_options_reach_the_request(tmp_path: Path) -> None:
    setup = Setup(
        tmp_path, {"fal": {"native_output_formats": ["jpeg"]}}, fields={"output_format": "jpeg", "unknown_field": 1}
    )
    await setup.run(1)
    (request,) = setup.fakes["fal"].history
    assert (request.output_format, request.extra, request.prompt) == ("jpeg", {"unknown_field": 1}, "p")


async def test_an_upstream_failure_is_retried_on_the_same_provider(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}, "fal": {}}, retry_attempts=3)
    setup.fakes["gemini"].enqueue(UpstreamError("boom"))
    setup.fakes["gemini"].enqueue(UpstreamUnavailable("busy"))
    served, errors = await setup.run(1)
    assert images_by(served) == {"gemini": 1} and errors == []
    assert len(setup.fakes["gemini"].history) == 3 and setup.fakes["fal"].history == []
    assert setup.breaker.state("gemini") == "closed"


async def test_failed_slots_fail_over_to_the_next_provider_with_their_own_seeds(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}, "fal": {"max_images_per_call": 4}}, fields={"seed": 10})
    setup.fakes["gemini"].enqueue(result(1))
    setup.fakes["gemini"].enqueue(UpstreamUnavailable("busy"))
    setup.fakes["gemini"].enqueue(UpstreamError("boom"))
    served, errors = await setup.run(3)
    assert images_by(served) == {"gemini": 1, "fal": 2}
    assert [type(e) for e in errors] == [UpstreamUnavailable, UpstreamError]
    # The two failed slots (seeds 11 and 12) go to fal as separate slots, each a call of its own.
    assert sorted((r.n, r.seed) for r in setup.fakes["fal"].history) == [(1, 11), (1, 12)]


async def test_a_client_fault_is_final_and_not_failed_over(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}, "fal": {}}, retry_attempts=3)
    refusal = ContentPolicyViolation("no")
    setup.fakes["gemini"].enqueue(refusal)
    served, errors = await setup.run(1)
    assert (served, errors) == ([], [refusal])
    assert len(setup.fakes["gemini"].history) == 1 and setup.fakes["fal"].history == []
    assert setup.breaker.state("gemini") == "closed"  # the client's fault says nothing about the upstream


async def test_an_open_circuit_stops_the_retries_and_moves_on(tmp_path: Path) -> None:
    setup = Setup(
        tmp_path, {"gemini": {}, "fal": {}}, retry_attempts=5, breaker=CircuitBreaker(threshold=2, cooldown=60.0)
    )
    for _ in range(5):
        setup.fakes["gemini"].enqueue(UpstreamError("boom"))
    served, errors = await setup.run(1)
    assert images_by(served) == {"fal": 1} and len(errors) == 1
    assert len(setup.fakes["gemini"].history) == 2  # the second failure opened the circuit
    assert setup.breaker.state("gemini") == "open"


async def test_every_provider_failing_returns_all_their_errors(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}, "fal": {}})
    setup.fakes["gemini"].enqueue(UpstreamUnavailable("busy"))
    setup.fakes["fal"].enqueue(UpstreamUnavailable("also busy"))
    served, errors = await setup.run(1)
    assert served == [] and [e.message for e in errors] == ["busy", "also busy"]


async def test_a_bug_in_a_provider_is_not_an_upstream_failure(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}, "fal": {}})
    setup.fakes["gemini"].enqueue(KeyError("bug"))
    with pytest.raises(KeyError):
        await setup.run(1)
    assert setup.fakes["fal"].history == []


async def test_the_deadline_ends_the_run_with_a_504(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}})
    setup.fakes["gemini"].enqueue(result(1), delay=30)
    paid: list[Served] = []
    with pytest.raises(UpstreamTimeout) as excinfo:
        await setup.run(1, deadline=asyncio.get_running_loop().time() + 0.05, paid=paid)
    assert excinfo.value.code == "request_timeout" and paid == []


async def test_a_cancelled_run_leaves_the_calls_that_returned_in_paid(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"gemini": {}})
    setup.fakes["gemini"].enqueue(result(1))
    setup.fakes["gemini"].enqueue(result(1), delay=30)
    paid: list[Served] = []
    task = asyncio.create_task(setup.run(2, paid=paid))
    while not paid:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(item.route.provider_id, len(item.result.images)) for item in paid] == [("gemini", 1)]
    assert len(setup.fakes["gemini"].history) == 2
