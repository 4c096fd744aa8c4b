"""limits.py: the same test functions over both backends, in-process and a real Redis (the
`redis_url` fixture), including two Limits objects sharing one state as two instances would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from imagegate.config import ProviderSettings
from imagegate.db import Database, PostgresDatabase, migrate
from imagegate.errors import InsufficientQuota, LimitsUnavailable, ModelNotAllowed, RateLimitExceeded
from imagegate.limits import (
    Limits,
    LocalLimitState,
    RedisLimitState,
    SharedBreaker,
    ledger_seed,
    periods_at,
    redis_client,
    upstream_budgets,
)
from imagegate.policy import Budget, KeyPolicy, RateLimits
from imagegate.usage import UsageLog, UsageRecord

from .backends import free_port
from .fakes.provider import model_entry, small_catalog

BACKENDS = ["local", "redis"]


class Seeds:
    """A usage ledger stand-in that says how often, and for which period, it was read."""

    def __init__(self, spent: float = 0.0) -> None:
        self.spent = spent
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, key_id: str, since: float) -> float:
        self.calls.append((key_id, since))
        return self.spent


LimitsFactory = Callable[..., Limits]


@pytest.fixture(params=BACKENDS)
async def make_limits(request: pytest.FixtureRequest) -> AsyncIterator[LimitsFactory]:
    """make_limits(seed=..., upstream=...) -> a Limits; every one made in a test shares one state
    (one Redis database, or one in-process state), as instances of one deployment do."""
    made: list[Limits] = []
    local = LocalLimitState()
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def factory(seed: Any = None, upstream: dict[str, RateLimits] | None = None) -> Limits:
        state = RedisLimitState(redis_client(url)) if url else local
        limits = Limits(state, seed or Seeds(), upstream)
        made.append(limits)
        return limits

    yield factory
    for limits in made:
        if url:
            await limits.aclose()
        else:
            await limits.drain()


def key(key_id: str = "k1", **fields: Any) -> KeyPolicy:
    return KeyPolicy(key_id=key_id, name="test", **fields)


async def refused(call: Awaitable[Any]) -> RateLimitExceeded:
    with pytest.raises(RateLimitExceeded) as excinfo:
        await call
    return excinfo.value


# --- rate limits ---------------------------------------------------------------------------------


async def test_requests_per_minute_admits_the_limit_then_says_when_to_come_back(make_limits: LimitsFactory) -> None:
    limits = make_limits()
    policy = key(rate_limits=RateLimits(requests_per_minute=2))
    await limits.take_rate(policy, 1)
    await limits.take_rate(policy, 1)
    error = await refused(limits.take_rate(policy, 1))
    assert (error.status_code, error.code, error.error_type) == (429, "rate_limit_exceeded", "requests")
    # GCRA at 2 a minute: one more fits 30 s after the burst.
    assert error.retry_after is not None and 25 < error.retry_after <= 30
    assert error.headers()["retry-after"] in {str(s) for s in range(25, 31)}


async def test_a_refused_request_consumes_nothing(make_limits: LimitsFactory) -> None:
    limits = make_limits()
    policy = key(rate_limits=RateLimits(requests_per_minute=2, images_per_minute=4))
    await limits.take_rate(policy, 3)
    error = await refused(limits.take_rate(policy, 2))  # over the images, not the requests
    assert "images_per_minute" in error.message
    await limits.take_rate(policy, 1)  # the refused one took neither a request nor images
    await refused(limits.take_rate(policy, 1))


async def test_more_images_than_a_minute_allows_is_refused_without_retry_after(make_limits: LimitsFactory) -> None:
    error = await refused(make_limits().take_rate(key(rate_limits=RateLimits(images_per_minute=2)), 3))
    assert error.param == "n" and error.retry_after is None


async def test_two_instances_share_one_limit(make_limits: LimitsFactory) -> None:
    first, second = make_limits(), make_limits()
    policy = key(rate_limits=RateLimits(requests_per_minute=3))
    await first.take_rate(policy, 1)
    await second.take_rate(policy, 1)
    await first.take_rate(policy, 1)
    await refused(second.take_rate(policy, 1))
    await first.take_rate(key(key_id="k2", rate_limits=RateLimits(requests_per_minute=3)), 1)  # per key


async def test_a_key_without_limits_is_not_counted(make_limits: LimitsFactory) -> None:
    limits = make_limits()
    for _ in range(50):
        await limits.take_rate(key(), 10)
    assert await limits.reserve(key(), 100.0, ttl=10) is None


# --- budgets -------------------------------------------------------------------------------------


async def test_a_budget_is_reserved_then_settled_with_the_real_cost(make_limits: LimitsFactory) -> None:
    limits = make_limits()
    policy = key(budget=Budget(usd_per_day=1.0))
    first = await limits.reserve(policy, 0.6, ttl=60)
    with pytest.raises(InsufficientQuota) as excinfo:
        await limits.reserve(policy, 0.6, ttl=60)  # 0.6 reserved + 0.6 > 1
    assert (excinfo.value.status_code, excinfo.value.code, excinfo.value.error_type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    limits.settle(first, 0.5)  # cost less than expected
    await limits.drain()
    with pytest.raises(InsufficientQuota):
        await limits.reserve(policy, 0.6, ttl=60)  # 0.5 spent + 0.6
    second = await limits.reserve(policy, 0.5, ttl=60)
    limits.settle(second, 0.0)  # nothing paid: released
    await limits.drain()
    assert await limits.reserve(policy, 0.5, ttl=60) is not None


async def test_spent_is_seeded_once_from_the_ledger_for_the_period(make_limits: LimitsFactory) -> None:
    seeds = Seeds(spent=0.9)
    limits, other = make_limits(seed=seeds), make_limits(seed=seeds)
    policy = key(budget=Budget(usd_per_day=1.0, usd_per_month=50.0))
    with pytest.raises(InsufficientQuota) as excinfo:
        await limits.reserve(policy, 0.2, ttl=60)
    assert "usd_per_day" in excinfo.value.message
    assert await other.reserve(policy, 0.1, ttl=60) is not None
    day, month = periods_at("k1", 1.0, 50.0, time.time())
    assert sorted(seeds.calls) == sorted([("k1", day.start), ("k1", month.start)])  # once each, for both
    assert time.gmtime(day.start)[3:6] == (0, 0, 0) and time.gmtime(month.start)[2:6] == (1, 0, 0, 0)


async def test_a_monthly_budget_counts_what_other_days_spent(make_limits: LimitsFactory) -> None:
    limits = make_limits(seed=Seeds(spent=4.5))
    with pytest.raises(InsufficientQuota) as excinfo:
        await limits.reserve(key(budget=Budget(usd_per_month=5.0)), 0.6, ttl=60)
    assert "usd_per_month" in excinfo.value.message


async def test_in_process_the_ledger_is_read_again_for_other_instances_spending() -> None:
    seeds = Seeds(spent=0.0)
    limits = Limits(LocalLimitState(reseed_seconds=0.2), seeds)
    policy = key(budget=Budget(usd_per_day=1.0))
    limits.settle(await limits.reserve(policy, 0.5, ttl=60), 0.0)
    await limits.drain()
    seeds.spent = 0.9  # another instance's rows, in the shared database
    assert await limits.reserve(policy, 0.2, ttl=60) is not None  # not read again yet
    await asyncio.sleep(0.3)
    with pytest.raises(InsufficientQuota):
        await limits.reserve(policy, 0.2, ttl=60)


async def test_a_reservation_whose_request_died_expires(make_limits: LimitsFactory) -> None:
    limits = make_limits()
    policy = key(budget=Budget(usd_per_day=1.0))
    await limits.reserve(policy, 1.0, ttl=0.3)  # never settled: its instance was killed
    with pytest.raises(InsufficientQuota):
        await limits.reserve(policy, 0.5, ttl=60)
    await asyncio.sleep(0.5)
    assert await make_limits().reserve(policy, 0.5, ttl=60) is not None


async def test_a_cancelled_request_still_settles(make_limits: LimitsFactory) -> None:
    limits = make_limits()
    policy = key(budget=Budget(usd_per_day=1.0))
    reserved = asyncio.Event()

    async def request() -> None:
        reservation = await limits.reserve(policy, 0.9, ttl=60)
        try:
            reserved.set()
            await asyncio.sleep(3600)  # the upstream call, paid, when the client goes away
        finally:
            limits.settle(reservation, 0.7)

    task = asyncio.create_task(request())
    await reserved.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await limits.drain()
    with pytest.raises(InsufficientQuota):
        await limits.reserve(policy, 0.4, ttl=60)  # 0.7 was spent
    assert await limits.reserve(policy, 0.3, ttl=60) is not None  # and the 0.9 reservation is gone


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(tmp_path / "imagegate.db")
    url = request.getfixturevalue("postgres_url")
    migrate(url)
    return PostgresDatabase(url, tmp_path / "data" / "imagegate.db")


async def test_the_ledger_seed_sums_the_keys_rows_of_the_period(ledger_db: Database) -> None:
    db = ledger_db
    log = UsageLog(db)
    try:
        day = periods_at("k1", 1.0, None, time.time())[0]

        def row(key_id: str, cost: float, at: float) -> None:
            log.record(UsageRecord(f"r{at}{key_id}", key_id, None, "m", "p", "t2i", 1, cost, 0, 0), at=at)

        row("k1", 0.25, day.start + 1)
        row("k1", 0.5, time.time())
        row("k1", 4.0, day.start - 1)  # yesterday
        row("k2", 8.0, time.time())  # another key
        assert await ledger_seed(db)("k1", day.start) == pytest.approx(0.75)
    finally:
        log.close()
        db.close()


async def test_redis_that_does_not_answer_is_a_503_not_a_pass() -> None:
    limits = Limits(RedisLimitState(redis_client(f"redis://127.0.0.1:{free_port()}/0")), Seeds())
    try:
        with pytest.raises(LimitsUnavailable) as excinfo:
            await limits.take_rate(key(rate_limits=RateLimits(requests_per_minute=1)), 1)
        assert excinfo.value.status_code == 503
    finally:
        await limits.aclose()


# --- the model allow-list ------------------------------------------------------------------------


def test_the_allow_list_takes_ids_and_aliases_both_ways() -> None:
    entry = model_entry("m", aliases=["m-alias"])
    catalog = small_catalog(entry, model_entry("other"))
    Limits.check_model(key(models=("m",)), "m-alias", entry, catalog)  # named by alias, listed by id
    Limits.check_model(key(models=("m-alias",)), "m", entry, catalog)  # named by id, listed by alias
    Limits.check_model(key(), "m", entry, catalog)  # no list: every model
    with pytest.raises(ModelNotAllowed) as excinfo:
        Limits.check_model(key(models=("other",)), "m-alias", entry, catalog)
    assert (excinfo.value.status_code, excinfo.value.code, excinfo.value.param) == (403, "model_not_allowed", "model")


# --- upstream budgets ----------------------------------------------------------------------------


def test_upstream_budgets_come_from_the_provider_tables() -> None:
    tables = {
        "gemini": ProviderSettings(requests_per_minute=10, images_per_minute=20),
        "fal": ProviderSettings(api_key="x"),
    }
    assert upstream_budgets(tables) == {"gemini": RateLimits(10, 20)}


async def test_an_upstream_budget_is_shared_and_says_how_long_to_wait(make_limits: LimitsFactory) -> None:
    budgets = {"gemini": RateLimits(images_per_minute=3)}
    first, second = make_limits(upstream=budgets), make_limits(upstream=budgets)
    assert await first.take_upstream("gemini", 2) == 0
    assert await second.take_upstream("gemini", 1) == 0
    assert 15 < await second.take_upstream("gemini", 1) <= 20  # 60 s / 3 images
    assert await first.take_upstream("fal", 100) == 0  # no budget of its own
    assert not first.has_upstream_budget("fal") and first.has_upstream_budget("gemini")


async def test_an_upstream_call_bigger_than_the_budget_counts_as_one_minute(make_limits: LimitsFactory) -> None:
    limits = make_limits(upstream={"gemini": RateLimits(images_per_minute=2)})
    assert await limits.take_upstream("gemini", 5) == 0  # a full allowance: it is not refused for ever
    assert await limits.take_upstream("gemini", 1) > 0


# --- the shared circuit breaker ------------------------------------------------------------------


async def test_a_circuit_opened_by_one_instance_is_open_for_the_other(redis_url: str) -> None:
    clients = [redis_client(redis_url), redis_client(redis_url)]
    first, second = (SharedBreaker(2, 30.0, c, providers=["gemini"]) for c in clients)
    try:
        first.record_failure("gemini")
        first.record_failure("gemini")
        await first.drain()
        assert not second.is_open("gemini")  # nothing local: it has not looked yet
        deadline = time.monotonic() + 10
        while not second.is_open("gemini") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the background refresh (is_open started it)
        assert second.is_open("gemini") and second.state("gemini") == "open"
        first.record_success("gemini")  # its half-open call succeeded: closed for everyone
        await first.drain()
        await second.refresh()
        assert second.state("gemini") == "closed"
    finally:
        for breaker in (first, second):
            await breaker.aclose()
        for client in clients:
            await client.aclose()


async def test_the_shared_cooldown_runs_from_when_it_opened(redis_url: str) -> None:
    clients = [redis_client(redis_url), redis_client(redis_url)]
    first, second = (SharedBreaker(1, 0.3, c, providers=["gemini"]) for c in clients)
    try:
        first.record_failure("gemini")
        await first.drain()
        await second.refresh()
        assert second.state("gemini") == "open"
        await asyncio.sleep(0.4)
        await second.refresh()
        assert second.state("gemini") == "half-open"  # its cool-down is over on every instance
    finally:
        for breaker in (first, second):
            await breaker.aclose()
        for client in clients:
            await client.aclose()
