"""API keys: stored hashed, checked in constant time; static keys may also come from the environment.

Keys are long random tokens, so one SHA-256 is the right hash (a slow password hash buys nothing
against 256 bits of entropy and would cost every request). Auth is on as soon as any key exists
(static, static admin or stored), and stays on when the last stored key is revoked (revoking must
never open the gateway).

Each stored key carries its policy (policy.py): a model allow-list, rate limits, a budget, an
expiry and the admin scope, kept in its `api_keys` row and changed through the admin API or
`imagegate keys update`. A key past its `expires_at` stops verifying, as a revoked one does. Static
keys (IMAGEGATE_API_KEYS) are unlimited; static admin keys (IMAGEGATE_ADMIN_KEYS) are unlimited
admins. Static keys are configuration: they are not listed, and their ids only name them
(`static-<hash prefix>`, `static-admin-<hash prefix>`).

Each stored key also gets a webhook signing secret (`whsec_...`, webhooks.py), shown once with the
key. Unlike the key it is kept as it is: an HMAC signature needs the secret itself.

Lookups are cached for CACHE_SECONDS (by hash, never the key; by id for `policy`): a request costs
no database query on the event loop, and a key revoked or changed by another process or instance
(`imagegate keys revoke`, another gateway's admin API) is seen within that time; revoked, changed
or created through this store, at once. One lookup by hash fills both caches, so the policy of a key
just verified is a dict lookup too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

from .db import Database
from .errors import AuthenticationFailed
from .policy import Budget, KeyPolicy, RateLimits
from .webhooks import generate_secret

KEY_PREFIX = "ig-"
STATIC_ID_PREFIX = "static-"  # the id of a key from IMAGEGATE_API_KEYS (and, below, IMAGEGATE_ADMIN_KEYS)
STATIC_ADMIN_ID_PREFIX = STATIC_ID_PREFIX + "admin-"  # the id of a key from IMAGEGATE_ADMIN_KEYS
# How long a lookup (valid, revoked or unknown) is believed; revocation is promised within 1 s.
CACHE_SECONDS = 0.5
# The last second datetime can show (iso() writes every time the API answers): a later "time" is
# no date at all, and its Unix seconds overflow 64-bit integers in the answer's JSON.
LATEST_TIME = datetime.max.replace(tzinfo=UTC).timestamp()
MAX_CACHED = 10_000  # distinct hashes; a flood of wrong keys clears the cache rather than growing it

# The policy's columns in api_keys (db.py ADDED_COLUMNS, migration 0003), which `update` may change.
POLICY_COLUMNS = (
    "models",
    "requests_per_minute",
    "images_per_minute",
    "usd_per_day",
    "usd_per_month",
    "expires_at",
    "admin",
)
UPDATABLE = ("name", *POLICY_COLUMNS)
_SELECT = "SELECT id, name, prefix, created_at, revoked_at, updated_at, " + ", ".join(POLICY_COLUMNS) + " FROM api_keys"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_time(value: str | float) -> float:
    """Unix seconds from a number or an ISO 8601 date or date-time (UTC when it names no zone);
    ValueError when it is neither."""
    if isinstance(value, bool):
        raise ValueError("a time is Unix seconds or an ISO 8601 date/time, not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{value!r} is neither Unix seconds nor an ISO 8601 date/time") from None
            seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or seconds < 0 or seconds >= LATEST_TIME:
        raise ValueError(f"{value!r} is not a time")
    return seconds


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None
    models: tuple[str, ...] | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    budget: Budget = field(default_factory=Budget)
    expires_at: float | None = None
    admin: bool = False
    updated_at: float | None = None

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        key_id, name, prefix, created_at, revoked_at, updated_at, models, rpm, ipm, day, month, expires, admin = row
        return cls(
            id=str(key_id),
            name=str(name),
            prefix=str(prefix),
            created_at=float(created_at),
            revoked_at=None if revoked_at is None else float(revoked_at),
            models=None if models is None else tuple(json.loads(models)),
            rate_limits=RateLimits(
                requests_per_minute=None if rpm is None else int(rpm),
                images_per_minute=None if ipm is None else int(ipm),
            ),
            budget=Budget(
                usd_per_day=None if day is None else float(day), usd_per_month=None if month is None else float(month)
            ),
            expires_at=None if expires is None else float(expires),
            admin=bool(admin),
            updated_at=float(updated_at) if updated_at is not None else float(created_at),
        )

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    @property
    def active(self) -> bool:
        """Neither revoked nor expired: the key verifies."""
        return self.revoked_at is None and not self.expired()

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at is not None else "expired" if self.expired() else "active"

    @cached_property
    def policy(self) -> KeyPolicy:
        return KeyPolicy(
            key_id=self.id,
            name=self.name,
            models=self.models,
            rate_limits=self.rate_limits,
            budget=self.budget,
            expires_at=self.expires_at,
            admin=self.admin,
        )

    def to_object(self) -> dict[str, Any]:
        """The admin API's key object (times as Unix seconds); never the key or its hash."""

        def seconds(value: float | None) -> int | None:
            return None if value is None else int(value)

        return {
            "object": "api_key",
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": int(self.created_at),
            "updated_at": seconds(self.updated_at),
            "expires_at": seconds(self.expires_at),
            "revoked_at": seconds(self.revoked_at),
            "models": None if self.models is None else list(self.models),
            "rate_limits": {
                "requests_per_minute": self.rate_limits.requests_per_minute,
                "images_per_minute": self.rate_limits.images_per_minute,
            },
            "budget": {"usd_per_day": self.budget.usd_per_day, "usd_per_month": self.budget.usd_per_month},
            "admin": self.admin,
        }


def _column_value(column: str, value: Any) -> Any:
    """A policy field as its api_keys column holds it; ValueError for a value no key may have."""
    if column not in UPDATABLE:
        raise ValueError(f"{column!r} is not a key field that can be changed (one of: {', '.join(UPDATABLE)})")
    if column == "name":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a key's name must be a non-empty string")
        return value
    if column == "models":
        if value is None:
            return None
        models = list(dict.fromkeys(value))
        if not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError("models must name at least one model (None allows every model)")
        return json.dumps(models)
    if column == "admin":
        return int(bool(value))  # INTEGER on both databases: PostgreSQL refuses a boolean there
    if value is None:
        return None
    if column in ("requests_per_minute", "images_per_minute"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{column} must be a whole number of at least 1 (None: no limit)")
        return value
    if column in ("usd_per_day", "usd_per_month"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{column} must be a finite amount of at least 0 (None: no limit)")
        return float(value)
    return parse_time(value)  # expires_at


class KeyChecker(Protocol):
    """What the HTTP layer needs: is auth on, whose key is this, and what may it do."""

    def auth_required(self) -> bool: ...

    def verify(self, key: str) -> str | None: ...

    def authenticate(self, key: str) -> str: ...

    def policy(self, key_id: str) -> KeyPolicy | None: ...


class KeyStore:
    """Keys in the database, plus the static ones from the environment."""

    def __init__(self, db: Database, static_keys: list[str] | None = None, admin_keys: list[str] | None = None) -> None:
        self.db = db
        # (hash, policy); a key named in both variables is an admin.
        self._static: list[tuple[str, KeyPolicy]] = []
        for digest in dict.fromkeys(hash_key(k) for k in (admin_keys or []) if k):
            self._static.append(
                (digest, KeyPolicy.unlimited(STATIC_ADMIN_ID_PREFIX + digest[:12], "static admin", admin=True))
            )
        admins = {digest for digest, _ in self._static}
        for digest in dict.fromkeys(hash_key(k) for k in (static_keys or []) if k and hash_key(k) not in admins):
            self._static.append((digest, KeyPolicy.unlimited(STATIC_ID_PREFIX + digest[:12], "static")))
        self._static_by_id = {policy.key_id: policy for _, policy in self._static}
        # hash -> (looked up at, record or None), id -> the same: distinct ids are bounded by the rows.
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._by_id: dict[str, tuple[float, KeyRecord | None]] = {}
        self._required: tuple[float, bool] | None = None

    def _forget(self) -> None:
        self._cache.clear()
        self._by_id.clear()
        self._required = None

    def create(
        self,
        name: str,
        *,
        models: tuple[str, ...] | list[str] | None = None,
        rate_limits: RateLimits | None = None,
        budget: Budget | None = None,
        expires_at: float | None = None,
        admin: bool = False,
    ) -> tuple[KeyRecord, str]:
        """Make a key with its policy; the plaintext is returned once and never stored. The key's
        webhook secret is made with it (`webhook_secret`). ValueError for a value no key may have."""
        rate_limits, budget = rate_limits or RateLimits(), budget or Budget()
        fields: dict[str, Any] = {
            "name": name,
            "models": models,
            "requests_per_minute": rate_limits.requests_per_minute,
            "images_per_minute": rate_limits.images_per_minute,
            "usd_per_day": budget.usd_per_day,
            "usd_per_month": budget.usd_per_month,
            "expires_at": expires_at,
            "admin": admin,
        }
        values = {column: _column_value(column, value) for column, value in fields.items()}
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id, now = "key_" + secrets.token_hex(6), time.time()
        columns = ["id", "prefix", "key_hash", "created_at", "updated_at", "webhook_secret", *values]
        row = (key_id, plaintext[:10], hash_key(plaintext), now, now, generate_secret(), *values.values())
        self.db.execute(
            f"INSERT INTO api_keys ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            row,
        )
        self._forget()
        record = self.get(key_id)
        assert record is not None
        return record, plaintext

    def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Change some of a stored key's name and policy fields (UPDATABLE: the flat column names,
        None clearing a limit); the key as it is now, or None when there is no such key. A revoked
        key stays revoked. ValueError for an unknown field or a value no key may have."""
        values = {column: _column_value(column, value) for column, value in changes.items()}
        assignments = ", ".join(f"{column} = ?" for column in [*values, "updated_at"])
        rows = self.db.execute(
            f"UPDATE api_keys SET {assignments} WHERE id = ? RETURNING id", (*values.values(), time.time(), key_id)
        )
        self._forget()
        return self.get(key_id) if rows else None

    def get(self, key_id: str) -> KeyRecord | None:
        """A stored key, revoked or expired ones too (never a static key)."""
        rows = self.db.execute(f"{_SELECT} WHERE id = ?", (key_id,))
        return KeyRecord.from_row(rows[0]) if rows else None

    def list(self, include_revoked: bool = True) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self.db.execute(f"{_SELECT}{where} ORDER BY created_at, id")
        return [KeyRecord.from_row(row) for row in rows]

    def webhook_secret(self, key_id: str) -> str | None:
        """The stored key's webhook signing secret; None for a revoked or unknown key, or one made
        before keys had secrets."""
        rows = self.db.execute("SELECT webhook_secret FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def revoke(self, key_id: str) -> bool:
        now = time.time()
        rows = self.db.execute(
            "UPDATE api_keys SET revoked_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
            (now, now, key_id),
        )
        self._forget()
        return bool(rows)

    def auth_required(self) -> bool:
        if self._static:
            return True
        now = time.monotonic()
        if self._required is None or now - self._required[0] >= CACHE_SECONDS:
            self._required = (now, bool(self.db.execute("SELECT 1 FROM api_keys LIMIT 1")))
        return self._required[1]

    def _static_policy(self, digest: str) -> KeyPolicy | None:
        found = None
        for static, policy in self._static:
            if hmac.compare_digest(static, digest):
                found = policy
        return found

    def _stored(self, digest: str) -> KeyRecord | None:
        """The stored key with this hash (revoked and expired ones too), cached."""
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        rows = self.db.execute(f"{_SELECT} WHERE key_hash = ?", (digest,))
        record = KeyRecord.from_row(rows[0]) if rows else None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (now, record)
        if record is not None:
            self._remember(record.id, now, record)
        return record

    def _remember(self, key_id: str, at: float, record: KeyRecord | None) -> None:
        if len(self._by_id) >= MAX_CACHED:
            self._by_id.clear()
        self._by_id[key_id] = (at, record)

    def verify(self, key: str) -> str | None:
        """The key's id ('static-<hash prefix>' for environment keys) when valid and active (not
        revoked, not expired), else None."""
        digest = hash_key(key)
        static = self._static_policy(digest)
        if static is not None:
            return static.key_id  # distinct per key, never the key itself
        record = self._stored(digest)
        return record.id if record is not None and record.active else None

    def authenticate(self, key: str) -> str:
        """`verify`, with the reason a key is refused: AuthenticationFailed (401) for a wrong,
        revoked or expired key."""
        key_id = self.verify(key)
        if key_id is not None:
            return key_id
        record = self._stored(hash_key(key))  # cached by verify: no second query
        if record is not None and record.revoked_at is not None:
            raise AuthenticationFailed("This API key has been revoked.")
        if record is not None and record.expires_at is not None:
            raise AuthenticationFailed(f"This API key expired at {iso(record.expires_at)}.", code="api_key_expired")
        raise AuthenticationFailed("Incorrect API key provided.")

    def policy(self, key_id: str) -> KeyPolicy | None:
        """What the key may do: static keys unlimited (static admin keys as admins); a stored key's
        own policy; None for an unknown, revoked or expired key."""
        static = self._static_by_id.get(key_id)
        if static is not None:
            return static
        now = time.monotonic()
        cached = self._by_id.get(key_id)
        if cached is None or now - cached[0] >= CACHE_SECONDS:
            rows = self.db.execute(f"{_SELECT} WHERE id = ?", (key_id,))
            cached = (now, KeyRecord.from_row(rows[0]) if rows else None)
            self._remember(key_id, now, cached[1])
        record = cached[1]
        return record.policy if record is not None and record.active else None
