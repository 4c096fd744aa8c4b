"""What a key may do: its model allow-list, rate limits, spend budget, expiry and admin scope.

Plain data, shared by the key store (keys.py, which keeps it with each stored key and serves it to
the admin API) and the limits that enforce it on each request (limits.py). A static key from
IMAGEGATE_API_KEYS has `unlimited(...)`; one from IMAGEGATE_ADMIN_KEYS the same with `admin`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    requests_per_minute: int | None = None  # None: no limit
    images_per_minute: int | None = None


@dataclass(frozen=True)
class Budget:
    usd_per_day: float | None = None  # None: no limit; days and months are UTC
    usd_per_month: float | None = None


@dataclass(frozen=True)
class KeyPolicy:
    key_id: str
    name: str
    models: tuple[str, ...] | None = None  # allow-list of model ids or aliases; None: every model
    rate_limits: RateLimits = RateLimits()
    budget: Budget = Budget()
    expires_at: float | None = None  # Unix time; None: never
    admin: bool = False

    @classmethod
    def unlimited(cls, key_id: str, name: str, *, admin: bool = False) -> KeyPolicy:
        return cls(key_id=key_id, name=name, admin=admin)
