"""A key's rate limits and budgets, the providers' own upstream budgets, and a circuit breaker
shared between instances: one interface (`Limits`), two places to keep the state.

    Limits (what the pipeline and the dispatcher call)
    ├── LocalLimitState   no IMAGEGATE_REDIS_URL: in this process, as the rest of its state
    └── RedisLimitState   IMAGEGATE_REDIS_URL: in Redis, each check one atomic Lua script, so the
                          limits hold across every instance together

Rate limits (`requests_per_minute`, `images_per_minute`, per key and per provider) are GCRA, the
generic cell rate algorithm: each limit keeps one number, the theoretical arrival time (TAT). A
request of weight w at time t moves it to max(TAT, t) + w * 60/limit and is admitted when that
is at most t + 60 s, so a whole minute's allowance may come at once and then refills evenly: a
sliding window of 60 s without a log of requests. Several limits are taken all or none (a refused
request consumes nothing), and a refusal says how long until it would fit (Retry-After).

Budgets (`usd_per_day`, `usd_per_month`, UTC) are checked before any upstream call: the request's
expected cost is reserved if spent + reserved + expected <= budget. "Spent" for a period is seeded
from the usage ledger (the `usage` table, every instance's rows) the first time a period is
looked at, then kept as a running figure that each settle adds the real cost to. A reservation
carries a TTL (the request's deadline plus a margin), so one whose instance died expires. A
settle never awaits in the request: it runs as a task of its own, which a cancelled request does
not cancel (`Limits.settle` is synchronous).

The shared breaker keeps `is_open` a local read (it is on the hot path): failures and successes
are published to Redis by a background task, and every REFRESH_SECONDS the shared state of every
provider is read back, so a provider one instance opened is skipped by all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .catalog import Catalog, ModelEntry
from .config import ProviderSettings
from .db import Database, DatabaseError
from .errors import InsufficientQuota, LimitsUnavailable, ModelNotAllowed, RateLimitExceeded
from .policy import KeyPolicy, RateLimits
from .resilience import CircuitBreaker

if TYPE_CHECKING:
    import redis.asyncio


def _redis_error() -> type[Exception]:
    """redis-py's error class, imported only when Redis is used (redis-py 8 imports OpenTelemetry
    when it is installed, which a gateway without Redis should not pay for)."""
    import redis.exceptions

    return redis.exceptions.RedisError


log = logging.getLogger("imagegate")

WINDOW_SECONDS = 60.0  # every rate limit here is per minute
RESERVATION_MARGIN_SECONDS = 60.0  # a reservation outlives its request's deadline by this much
REFRESH_SECONDS = 0.5  # how often the shared breaker reads every provider's state back
SPENT_TTL_MARGIN_SECONDS = 3600.0  # a period's running figure outlives the period by this much (Redis)
LOCAL_RESEED_SECONDS = 30.0  # in-process: how long a period's figure is trusted before the ledger is read again
# Money is compared with this slack: float sums of prices are not exact.
EPSILON = 1e-9
SEED_SQL = "SELECT COALESCE(SUM(cost), 0) FROM usage WHERE key_id = ? AND created_at >= ?"

# The usage ledger's sum for a key since a Unix time: what every instance has spent.
SpentSeed = Callable[[str, float], Awaitable[float]]
PolicyLookup = Callable[[str | None], KeyPolicy | None]


@dataclass(frozen=True)
class Window:
    """One per-minute limit to take `amount` from. `name` is for messages; `key` names its state."""

    key: str
    name: str
    limit: int
    amount: int


@dataclass(frozen=True)
class Period:
    """A budget period of one key: `key` names its running figure, `start`/`end` are Unix times."""

    key: str
    name: str  # usd_per_day or usd_per_month
    limit: float
    start: float
    end: float


@dataclass
class Reservation:
    id: str
    key_id: str
    amount: float
    settled: bool = False


class LimitState(Protocol):
    """Where the counters live; each method is atomic against every other user of the state."""

    async def take(self, windows: Sequence[Window]) -> tuple[float, int]:
        """All windows or none: (0, -1) when taken, else (seconds until they fit, the index of the
        window that decides it)."""
        ...

    async def reserve(
        self, key_id: str, periods: Sequence[Period], amount: float, reservation_id: str, ttl: float, seed: SpentSeed
    ) -> int:
        """-1 when reserved, else the index of the period the amount does not fit."""
        ...

    async def settle(self, key_id: str, reservation_id: str, cost: float, periods: Sequence[Period]) -> None:
        """Drop the reservation and add `cost` to every period's running figure (where there is one)."""
        ...

    async def aclose(self) -> None: ...


# --- periods and windows -------------------------------------------------------------------------


def periods_at(key_id: str, budget_day: float | None, budget_month: float | None, now: float) -> list[Period]:
    """The UTC day and month that `now` falls in, for the limits that are set."""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    tag = _tag("key", key_id)
    periods = []
    if budget_day is not None:
        end = day + dt.timedelta(days=1)
        periods.append(Period(f"{tag}:day:{day:%Y-%m-%d}", "usd_per_day", budget_day, day.timestamp(), end.timestamp()))
    if budget_month is not None:
        periods.append(
            Period(
                f"{tag}:month:{month:%Y-%m}", "usd_per_month", budget_month, month.timestamp(), next_month.timestamp()
            )
        )
    return periods


def _tag(kind: str, ident: str) -> str:
    """`{kind:id}`: a Redis hash tag, so every key of one API key (or provider) is in one cluster slot
    and a script may touch them together."""
    return "{" + f"{kind}:{ident}" + "}"


def rate_windows(kind: str, ident: str, limits: RateLimits, images: int) -> list[Window]:
    tag = _tag(kind, ident)
    windows = []
    if limits.requests_per_minute is not None:
        windows.append(Window(f"{tag}:requests", "requests_per_minute", limits.requests_per_minute, 1))
    if limits.images_per_minute is not None:
        windows.append(Window(f"{tag}:images", "images_per_minute", limits.images_per_minute, images))
    return windows


def gcra(tat: float, now: float, limit: int, amount: int) -> tuple[float, float]:
    """(the new TAT if admitted, seconds to wait before it would be: 0 when admitted now)."""
    new_tat = max(tat, now) + amount * WINDOW_SECONDS / limit
    return new_tat, max(0.0, new_tat - WINDOW_SECONDS - now)


# --- in this process -----------------------------------------------------------------------------


class LocalLimitState:
    """The counters in this process. No await between a check and its update: atomic on the loop.
    A period's figure is read from the ledger again every `reseed_seconds`: instances that share a
    database but no Redis see each other's spending that late (and their own at once)."""

    def __init__(self, clock: Callable[[], float] = time.time, reseed_seconds: float = LOCAL_RESEED_SECONDS) -> None:
        self.clock = clock
        self.reseed_seconds = reseed_seconds
        self._tats: dict[str, float] = {}
        self._spent: dict[str, tuple[float, float]] = {}  # period key -> (spent, forget at)
        self._reserved: dict[str, dict[str, tuple[float, float]]] = {}  # key id -> id -> (amount, expires)

    async def take(self, windows: Sequence[Window]) -> tuple[float, int]:
        now = self.clock()
        results = [gcra(self._tats.get(w.key, 0.0), now, w.limit, w.amount) for w in windows]
        wait, worst = max(((r[1], i) for i, r in enumerate(results)), default=(0.0, -1))
        if wait > 0:
            return wait, worst
        for window, (new_tat, _) in zip(windows, results, strict=True):
            self._tats[window.key] = new_tat
        self._forget_old_tats(now)
        return 0.0, -1

    def _forget_old_tats(self, now: float) -> None:
        if len(self._tats) > 10_000:  # a TAT in the past is the same as none
            self._tats = {k: v for k, v in self._tats.items() if v > now}

    async def reserve(
        self, key_id: str, periods: Sequence[Period], amount: float, reservation_id: str, ttl: float, seed: SpentSeed
    ) -> int:
        for period in periods:
            if self._current(period.key) is None:
                spent = await seed(key_id, period.start)
                # A settle or another seed may have come in meanwhile: the first figure stays.
                if self._current(period.key) is None:
                    self._spent[period.key] = (spent, min(period.end, self.clock() + self.reseed_seconds))
        now = self.clock()
        mine = self._reserved.setdefault(key_id, {})
        for rid in [rid for rid, (_, expires) in mine.items() if expires <= now]:
            del mine[rid]
        reserved = sum(a for a, _ in mine.values())
        for index, period in enumerate(periods):
            if (self._current(period.key) or 0.0) + reserved + amount > period.limit + EPSILON:
                return index
        mine[reservation_id] = (amount, now + ttl)
        return -1

    def _current(self, key: str) -> float | None:
        entry = self._spent.get(key)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    async def settle(self, key_id: str, reservation_id: str, cost: float, periods: Sequence[Period]) -> None:
        self._reserved.get(key_id, {}).pop(reservation_id, None)
        for period in periods:
            current = self._current(period.key)
            if current is not None:  # none: the ledger has the row when the period is first seeded
                self._spent[period.key] = (current + cost, self._spent[period.key][1])

    async def aclose(self) -> None:
        return None


# --- in Redis ------------------------------------------------------------------------------------

PREFIX = "imagegate:"

# Every script reads the time from Redis itself (TIME), so all instances share one clock. Numbers
# go back as strings: Redis turns a Lua number into an integer.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS: one per window. ARGV: window seconds, then (limit, amount) per window.
TAKE_SCRIPT = (
    _NOW
    + """
local window = tonumber(ARGV[1])
local wait, worst, tats = 0, -1, {}
for i, key in ipairs(KEYS) do
  local limit, amount = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  tats[i] = tat + amount * window / limit
  local w = tats[i] - window - now
  if w > wait then wait, worst = w, i - 1 end
end
if wait > 0 then return {tostring(wait), tostring(worst)} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(tats[i]), 'PX', math.ceil((tats[i] - now) * 1000) + 1000)
end
return {'0', '-1'}
"""
)

# KEYS: reservation expiries (zset), reservation amounts (hash), then one running figure per period.
# ARGV: reservation id, amount, ttl, then one limit per period.
# Returns {'seed', i...} (periods without a figure yet), {'over', i} or {'ok'}.
RESERVE_SCRIPT = (
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local missing = {'seed'}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then table.insert(missing, tostring(i - 3)) end
end
if #missing > 1 then return missing end
local reserved = 0
for _, amount in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(amount) end
local amount, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 3, #KEYS do
  local spent = tonumber(redis.call('GET', KEYS[i]))
  if spent + reserved + amount > tonumber(ARGV[i + 1]) + 1e-9 then return {'over', tostring(i - 3)} end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local keep = math.ceil(ttl) + 60
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[2], keep)
return {'ok'}
"""
)

# KEYS as RESERVE_SCRIPT's; ARGV: reservation id, cost.
SETTLE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local cost = tonumber(ARGV[2])
if cost > 0 then
  for i = 3, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBYFLOAT', KEYS[i], ARGV[2]) end
  end
end
return 1
"""

# KEYS[1]: a provider's breaker hash. ARGV: threshold, seconds to keep the hash.
BREAKER_FAILURE_SCRIPT = (
    _NOW
    + """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'opened_at', tostring(now)) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return failures
"""
)

# KEYS: every provider's breaker hash. Returns {failures, seconds since opened or -1} per key.
BREAKER_READ_SCRIPT = (
    _NOW
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'failures', 'opened_at')
  local age = v[2] and (now - tonumber(v[2])) or -1
  table.insert(out, {tostring(v[1] or '0'), tostring(age)})
end
return out
"""
)


def _reservation_keys(key_id: str, periods: Sequence[Period]) -> list[str]:
    tag = _tag("key", key_id)
    return [f"{PREFIX}{tag}:reserved", f"{PREFIX}{tag}:reserved-amounts", *(PREFIX + p.key for p in periods)]


class RedisLimitState:
    """The counters in Redis, shared by every instance that names the same IMAGEGATE_REDIS_URL."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._take = client.register_script(TAKE_SCRIPT)
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._settle = client.register_script(SETTLE_SCRIPT)

    async def take(self, windows: Sequence[Window]) -> tuple[float, int]:
        args: list[Any] = [WINDOW_SECONDS]
        for window in windows:
            args += [window.limit, window.amount]
        wait, worst = await self._take(keys=[PREFIX + w.key for w in windows], args=args)
        return float(wait), int(worst)

    async def reserve(
        self, key_id: str, periods: Sequence[Period], amount: float, reservation_id: str, ttl: float, seed: SpentSeed
    ) -> int:
        keys = _reservation_keys(key_id, periods)
        args = [reservation_id, repr(amount), repr(ttl), *(repr(p.limit) for p in periods)]
        for _ in range(3):  # seeding can race with the period's figure expiring; it settles at once
            answer = [part.decode() for part in await self._reserve(keys=keys, args=args)]
            if answer[0] == "ok":
                return -1
            if answer[0] == "over":
                return int(answer[1])
            for index in map(int, answer[1:]):  # "seed": the first look at this period anywhere
                period = periods[index]
                spent = await seed(key_id, period.start)
                # NX: another instance's seed, or a settle since, wins; both count the same rows.
                await self.client.set(
                    PREFIX + period.key, repr(spent), nx=True, exat=int(period.end + SPENT_TTL_MARGIN_SECONDS)
                )
        raise LimitsUnavailable("The budget's running figure could not be set up in Redis.")

    async def settle(self, key_id: str, reservation_id: str, cost: float, periods: Sequence[Period]) -> None:
        await self._settle(keys=_reservation_keys(key_id, periods), args=[reservation_id, repr(cost)])

    async def aclose(self) -> None:
        await self.client.aclose()


# --- the shared circuit breaker ------------------------------------------------------------------


class SharedBreaker(CircuitBreaker):
    """A CircuitBreaker whose state is also kept in Redis (see the module docstring). Reading it
    never waits for Redis; what other instances saw arrives within REFRESH_SECONDS."""

    def __init__(
        self, threshold: int, cooldown: float, client: redis.asyncio.Redis, providers: Iterable[str] = ()
    ) -> None:
        super().__init__(threshold, cooldown)
        self.client = client
        self.providers = set(providers)
        self._failure = client.register_script(BREAKER_FAILURE_SCRIPT)
        self._read = client.register_script(BREAKER_READ_SCRIPT)
        self._outbox: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._last_error = 0.0

    @staticmethod
    def _key(provider_id: str) -> str:
        return f"{PREFIX}breaker:{_tag('provider', provider_id)}"

    def start(self) -> None:
        """The publisher and the refresher, on the running loop (at once if already started)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publish_loop()), loop.create_task(self._refresh_loop())]

    def _start_if_on_loop(self) -> None:
        if not self._tasks and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: a synchronous caller
                self.start()

    def is_open(self, provider_id: str) -> bool:
        self._start_if_on_loop()
        return super().is_open(provider_id)

    def record_success(self, provider_id: str) -> None:
        super().record_success(provider_id)
        self._send(provider_id, failed=False)

    def record_failure(self, provider_id: str) -> None:
        super().record_failure(provider_id)
        self._send(provider_id, failed=True)

    def _send(self, provider_id: str, *, failed: bool) -> None:
        self.providers.add(provider_id)
        self._start_if_on_loop()
        self._outbox.put_nowait((provider_id, failed))  # in order, by one publisher

    async def _publish_loop(self) -> None:
        while True:
            provider_id, failed = await self._outbox.get()
            try:
                await self.publish(provider_id, failed=failed)
            except _redis_error() as exc:
                self._complain(exc)

    async def publish(self, provider_id: str, *, failed: bool) -> None:
        if failed:
            keep = max(3600, math.ceil(self.cooldown * 10))
            await self._failure(keys=[self._key(provider_id)], args=[self.threshold, keep])
        else:
            await self.client.delete(self._key(provider_id))

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except _redis_error() as exc:
                self._complain(exc)
            await asyncio.sleep(REFRESH_SECONDS)

    async def refresh(self) -> None:
        """Every provider's circuit as Redis has it (another instance may have opened or closed it)."""
        providers = sorted(self.providers)
        if not providers:
            return
        rows = await self._read(keys=[self._key(p) for p in providers])
        now = self._now()
        for provider_id, (failures, age) in zip(providers, rows, strict=True):
            seconds = float(age)
            self.adopt(provider_id, int(failures), None if seconds < 0 else now - seconds)

    async def drain(self) -> None:
        """Wait until what was recorded so far is published (tests, shutdown)."""
        while not self._outbox.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _complain(self, exc: Exception) -> None:
        if time.monotonic() - self._last_error > 60:  # at most once a minute
            log.warning("shared circuit breaker: Redis did not answer (%s); local state only meanwhile", exc)
            self._last_error = time.monotonic()


# --- what the pipeline and the dispatcher call ---------------------------------------------------


def ledger_seed(db: Database) -> SpentSeed:
    """What a key spent since a time, from the usage table (all instances' rows)."""

    def query(key_id: str, since: float) -> float:
        rows = db.execute(SEED_SQL, (key_id, since))
        return float(rows[0][0]) if rows else 0.0

    async def seed(key_id: str, since: float) -> float:
        try:
            return await db.run(query, key_id, since)
        except DatabaseError as exc:
            raise LimitsUnavailable("The usage ledger could not be read to check the key's budget.") from exc

    return seed


def model_allowed(policy: KeyPolicy, named: str, model: ModelEntry, catalog: Catalog) -> bool:
    """As the client named it, or as the model it resolves to; allow-list entries may be aliases."""
    if policy.models is None or named in policy.models or model.id in policy.models:
        return True
    return any((entry := catalog.get(name)) is not None and entry.id == model.id for name in policy.models)


def upstream_budgets(providers: Mapping[str, ProviderSettings]) -> dict[str, RateLimits]:
    """The [providers.<id>] tables' requests_per_minute and images_per_minute."""
    return {
        provider_id: RateLimits(table.requests_per_minute, table.images_per_minute)
        for provider_id, table in providers.items()
        if table.requests_per_minute is not None or table.images_per_minute is not None
    }


class Limits:
    def __init__(
        self,
        state: LimitState,
        seed: SpentSeed,
        upstream: Mapping[str, RateLimits] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.seed = seed
        # provider id -> its requests/images per minute ([providers.<id>] in the config file)
        self.upstream = {p: r for p, r in (upstream or {}).items() if r.requests_per_minute or r.images_per_minute}
        self.clock = clock
        self._settling: set[asyncio.Task[None]] = set()

    # the model allow-list

    @staticmethod
    def check_model(policy: KeyPolicy, named: str, model: ModelEntry, catalog: Catalog) -> None:
        if not model_allowed(policy, named, model, catalog):
            raise ModelNotAllowed(f"This API key may not use the model '{named}'.", param="model")

    # rate limits

    async def take_rate(self, policy: KeyPolicy, images: int) -> None:
        """Count one request of `images` against the key's limits, or refuse it (consuming nothing)."""
        windows = rate_windows("key", policy.key_id, policy.rate_limits, images)
        if not windows:
            return
        for window in windows:
            if window.amount > window.limit:  # it would never fit: no Retry-After would help
                raise RateLimitExceeded(
                    f"The request asks for {window.amount} images; the key allows {window.limit} images per minute.",
                    param="n",
                )
        wait, worst = await self._take(windows)
        if wait > 0:
            window = windows[worst]
            raise RateLimitExceeded(
                f"Rate limit reached for {window.name} (limit {window.limit}). Try again in {math.ceil(wait)} s.",
                retry_after=wait,
            )

    async def _take(self, windows: Sequence[Window]) -> tuple[float, int]:
        try:
            return await self.state.take(windows)
        except _redis_error() as exc:
            raise LimitsUnavailable("The rate-limit store (Redis) did not answer.") from exc

    # budgets

    async def reserve(self, policy: KeyPolicy, expected: float, ttl: float) -> Reservation | None:
        """Hold `expected` dollars of the key's budgets for a request, or refuse it (429
        insufficient_quota). None: the key has no budget, so there is nothing to settle."""
        periods = periods_at(policy.key_id, policy.budget.usd_per_day, policy.budget.usd_per_month, self.clock())
        if not periods:
            return None
        reservation = Reservation(uuid.uuid4().hex, policy.key_id, expected)
        try:
            over = await self.state.reserve(policy.key_id, periods, expected, reservation.id, ttl, self.seed)
        except _redis_error() as exc:
            raise LimitsUnavailable("The budget store (Redis) did not answer.") from exc
        if over >= 0:
            period = periods[over]
            raise InsufficientQuota(
                f"The request's expected cost (${expected:.4f}) is over what is left of the key's budget "
                f"({period.name} {period.limit:g})."
            )
        return reservation

    def settle(self, reservation: Reservation | None, cost: float) -> None:
        """Replace the reservation with what the request really cost (0: nothing was paid). Does not
        wait: the update runs as a task of its own, which cancelling the request does not cancel."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        periods = periods_at(reservation.key_id, 0.0, 0.0, self.clock())  # the periods of now, as the ledger row
        task = asyncio.get_running_loop().create_task(self._settle(reservation, cost, periods))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, reservation: Reservation, cost: float, periods: Sequence[Period]) -> None:
        try:
            await self.state.settle(reservation.key_id, reservation.id, cost, periods)
        except _redis_error() as exc:  # the reservation expires; the ledger has the cost
            log.warning("budget settle of key %s failed (%s)", reservation.key_id, exc)

    async def drain(self) -> None:
        """Wait for the settles in flight (shutdown, tests)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    # upstream budgets

    def has_upstream_budget(self, provider_id: str) -> bool:
        return provider_id in self.upstream

    async def take_upstream(self, provider_id: str, images: int) -> float:
        """Take one call of `images` from the provider's budget: 0 when taken (or it has none), else
        the seconds until it would fit. A call bigger than a whole minute's images counts as one
        minute's worth, so it waits for a full allowance rather than for ever."""
        limits = self.upstream.get(provider_id)
        if limits is None:
            return 0.0
        windows = [
            Window(w.key, w.name, w.limit, min(w.amount, w.limit))
            for w in rate_windows("provider", provider_id, limits, images)
        ]
        return (await self._take(windows))[0]

    async def aclose(self) -> None:
        await self.drain()
        await self.state.aclose()


REDIS_TIMEOUT_SECONDS = 2.0  # a Redis that hangs is a 503 limits_unavailable, not a request that hangs


def redis_client(url: str) -> redis.asyncio.Redis:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
