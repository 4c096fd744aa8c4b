"""Calling upstreams for one request: n split into calls, retries with backoff, failover to the
next provider, the circuit breaker, and one deadline over all of it.

`n` images are "slots" (a seed offset and a count). Each candidate (a provider with its planned view
of the request, see router.plan_candidates) gets the pending slots split into calls of at most its
`max_images_per_call`, all in parallel; slots whose calls fail for an
upstream reason move on to the next provider, slots refused for a client reason (bad input,
content policy) are final. Nothing here outlives the request's deadline.

A provider with an upstream budget (`requests_per_minute` / `images_per_minute` in its
[providers.<id>] table, limits.py) gets a call only when the budget has room: out of room, its
slots go to the next candidate (spread), and the last candidate waits for room (queue), so the
gateway does not send the calls the upstream would answer with 429.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import logs, metrics, tracing
from .config import Settings
from .errors import ImagegateError, UpstreamBudgetExhausted, UpstreamTimeout
from .limits import Limits
from .normalize import Layout
from .providers import InputImage, PartialListener, ProviderRequest, ProviderResult
from .resilience import CircuitBreaker, backoff_delay, is_retryable, is_upstream_failure
from .router import Candidate, Route

# Seeds are int32 upstream; image i of n gets seed + i, wrapping inside the range.
SEED_RANGE = 2**31


@dataclass(frozen=True)
class CallPlan:
    """What every upstream call of one request shares."""

    mode: str
    layout: Layout
    images: tuple[InputImage, ...]
    mask: InputImage | None
    on_partial: PartialListener | None = None  # streaming: each interim image, where the provider sends them


@dataclass(frozen=True)
class Served:
    """One successful upstream call and the candidate that served it."""

    candidate: Candidate
    result: ProviderResult

    @property
    def route(self) -> Route:
        return self.candidate.route


@dataclass(frozen=True)
class _Slot:
    offset: int  # image index of the first image, for its seed
    count: int


class Dispatcher:
    def __init__(self, settings: Settings, breaker: CircuitBreaker, limits: Limits | None = None) -> None:
        self.settings = settings
        self.breaker = breaker
        self.limits = limits

    def deadline(self) -> float:
        """A request's deadline on the event loop's clock, set once when the request starts."""
        return asyncio.get_running_loop().time() + self.settings.request_timeout_seconds

    def timed_out(self, while_doing: str = "") -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The request did not finish within its deadline of {self.settings.request_timeout_seconds:g} s"
            f"{while_doing}.",
            code="request_timeout",
        )

    async def run(
        self,
        candidates: list[Candidate],
        plan: CallPlan,
        n: int,
        deadline: float | None = None,
        paid: list[Served] | None = None,
    ) -> tuple[list[Served], list[ImagegateError]]:
        """All calls for `n` images within the request deadline (then UpstreamTimeout, 504). The
        deadline is the request's, passed in, so time spent fetching its inputs counts too.
        Each call that succeeds is added to `paid` as soon as it returns, so that a caller whose run
        ends early (the deadline, a cancel) still knows what the upstreams made and billed."""
        if deadline is None:
            deadline = self.deadline()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._fill(candidates, plan, n, [] if paid is None else paid)
        except TimeoutError as exc:
            raise self.timed_out() from exc

    async def _fill(
        self, candidates: list[Candidate], plan: CallPlan, n: int, paid: list[Served]
    ) -> tuple[list[Served], list[ImagegateError]]:
        served: list[Served] = []
        errors: list[ImagegateError] = []
        pending = [_Slot(0, n)]
        for index, candidate in enumerate(candidates):
            if not pending:
                break
            last = index == len(candidates) - 1
            per_call = candidate.view.plan.max_images_per_call
            calls = [
                _Slot(s.offset + i, min(per_call, s.count - i)) for s in pending for i in range(0, s.count, per_call)
            ]
            outcomes = await asyncio.gather(
                *(self._paid(candidate, self._request(candidate, plan, c), paid, last) for c in calls),
                return_exceptions=True,
            )
            pending = []
            for call, outcome in zip(calls, outcomes, strict=True):
                if isinstance(outcome, ProviderResult):
                    served.append(Served(candidate, outcome))
                elif isinstance(outcome, UpstreamBudgetExhausted):
                    pending.append(call)  # spread, not a failure: the next provider has the room
                elif isinstance(outcome, ImagegateError):
                    errors.append(outcome)
                    if is_upstream_failure(outcome):
                        pending.append(call)  # worth trying on the next provider
                else:
                    raise outcome  # a bug, not an upstream failure: the error handler logs a 500
        return served, errors

    async def _upstream_room(self, provider_id: str, images: int, last: bool) -> None:
        """Take one call from the provider's upstream budget: out of room, a provider that is not the
        last candidate hands its slots on (UpstreamBudgetExhausted, an upstream failure that is never
        sent anywhere nor held against its circuit); the last waits until there is room, within the
        request's deadline (run's timeout)."""
        if self.limits is None or not self.limits.has_upstream_budget(provider_id):
            return
        while (wait := await self.limits.take_upstream(provider_id, images)) > 0:
            if not last:
                raise UpstreamBudgetExhausted(
                    f"Provider {provider_id} is at its upstream budget for now.", retry_after=wait
                )
            await asyncio.sleep(wait)

    @staticmethod
    def _request(candidate: Candidate, plan: CallPlan, slot: _Slot) -> ProviderRequest:
        view = candidate.view
        seed = view.get("seed")
        return ProviderRequest(
            mode=plan.mode,
            prompt=view.get("prompt"),
            layout=plan.layout,
            plan=view.plan,
            n=slot.count,
            seed=None if seed is None else (seed + slot.offset) % SEED_RANGE,
            images=plan.images,
            mask=plan.mask,
            output_format=candidate.native_output_format,
            output_compression=view.get("output_compression"),
            options=view.options,
            extra=view.extra,
            # Only a provider that sends interim images gets a stream's listener (params._partial_images).
            on_partial=plan.on_partial if view.get("partial_images") else None,
            partial_images=view.get("partial_images", 0),
        )

    async def _paid(
        self, candidate: Candidate, request: ProviderRequest, paid: list[Served], last: bool = True
    ) -> ProviderResult:
        result = await self._attempts(candidate.route, request, last)
        paid.append(Served(candidate, result))
        return result

    async def _attempts(self, route: Route, request: ProviderRequest, last: bool = True) -> ProviderResult:
        """Up to `retry_attempts` tries on one provider, with backoff and jitter in between."""
        settings = self.settings
        for attempt in range(settings.retry_attempts):
            await self._upstream_room(route.provider_id, request.n, last)
            try:
                with (
                    metrics.upstream_attempt(route.provider_id),
                    tracing.upstream_span(route.provider_id, route.model.id, request.plan.upstream_model, attempt + 1),
                ):
                    result = await route.provider.run(request)
            except ImagegateError as error:
                if not is_upstream_failure(error):
                    logs.upstream_failure(
                        route.provider_id, error, attempt=attempt + 1, attempts=settings.retry_attempts, retrying=False
                    )
                    raise
                self.breaker.record_failure(route.provider_id)
                last = attempt + 1 >= settings.retry_attempts
                retrying = not (last or not is_retryable(error) or self.breaker.is_open(route.provider_id))
                delay = 0.0
                if retrying:
                    delay = backoff_delay(
                        attempt, settings.retry_backoff_seconds, settings.retry_max_delay_seconds, error.retry_after
                    )
                    # The upstream asks for a long pause: the next provider is faster.
                    retrying = delay <= settings.retry_max_delay_seconds
                logs.upstream_failure(
                    route.provider_id, error, attempt=attempt + 1, attempts=settings.retry_attempts, retrying=retrying
                )
                if not retrying:
                    raise
                await asyncio.sleep(delay)
                continue
            self.breaker.record_success(route.provider_id)
            return result
        raise AssertionError("unreachable")
