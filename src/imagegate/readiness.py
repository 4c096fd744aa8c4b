"""Is this instance ready for traffic? Each dependency it cannot serve without, asked once.

`CHECKS` is a list of small probes (the database answers `SELECT 1`, Redis answers PING when
`IMAGEGATE_REDIS_URL` is set, the result store can be reached); a probe raises when its dependency
does not answer, and gets `PROBE_TIMEOUT_SECONDS` to do it. `run(gateway)` runs them all at once and
returns `{"database": "ok", "redis": "error: ...", ...}` (a probe that does not apply is left out).
A new shared backend adds its probe to the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread

if TYPE_CHECKING:
    from .gateway import Gateway

PROBE_TIMEOUT_SECONDS = 2.0
MAX_DETAIL_CHARS = 200
OK = "ok"


async def database(gateway: Gateway) -> None:
    await gateway.db.run(gateway.db.execute, "SELECT 1")


async def redis(gateway: Gateway) -> None:
    """A PING on a connection of its own (redis-py's asyncio client)."""
    from redis.asyncio import Redis

    url = gateway.settings.redis_url
    assert url is not None  # `applies` said so
    client = Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=PROBE_TIMEOUT_SECONDS)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def results(gateway: Gateway) -> None:
    await anyio.to_thread.run_sync(gateway.store.check)


def _always(gateway: Gateway) -> bool:
    return True


def _redis_configured(gateway: Gateway) -> bool:
    return bool(gateway.settings.redis_url)


@dataclass(frozen=True)
class Check:
    name: str
    probe: Callable[[Gateway], Awaitable[None]]
    applies: Callable[[Gateway], bool] = _always


CHECKS: list[Check] = [
    Check("database", database),
    Check("redis", redis, applies=_redis_configured),
    Check("results", results),
]


async def _outcome(check: Check, gateway: Gateway) -> str:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await check.probe(gateway)
    except TimeoutError:
        return f"error: no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # whatever the dependency's client raises: reported, not raised
        detail = str(exc) or type(exc).__name__
        return f"error: {detail[:MAX_DETAIL_CHARS]}"
    return OK


async def run(gateway: Gateway, checks: list[Check] | None = None) -> dict[str, str]:
    applicable = [c for c in (CHECKS if checks is None else checks) if c.applies(gateway)]
    outcomes = await asyncio.gather(*(_outcome(c, gateway) for c in applicable))
    return {c.name: outcome for c, outcome in zip(applicable, outcomes, strict=True)}


def is_ready(checks: dict[str, str]) -> bool:
    return all(outcome == OK for outcome in checks.values())
