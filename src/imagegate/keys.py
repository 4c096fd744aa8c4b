"""API keys: stored hashed, checked in constant time; static keys may also come from the environment.

Keys are long random tokens, so one SHA-256 is the right hash (a slow password hash buys nothing
against 256 bits of entropy and would cost every request). Auth is on as soon as any key exists,
and stays on when the last stored key is revoked (revoking must never open the gateway).

Each stored key also gets a webhook signing secret (`whsec_...`, webhooks.py), shown once with the
key. Unlike the key it is kept as it is: an HMAC signature needs the secret itself.

Lookups are cached for CACHE_SECONDS (by hash, never the key): a request costs no database query
on the event loop, and a key revoked by another process (`imagegate keys revoke`) stops working
within that time; revoked or created through this store, at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from .db import Database
from .webhooks import generate_secret

KEY_PREFIX = "ig-"
STATIC_ID_PREFIX = "static-"  # the id of a key from IMAGEGATE_API_KEYS
# How long a lookup (valid, revoked or unknown) is believed; revocation is promised within 1 s.
CACHE_SECONDS = 0.5
MAX_CACHED = 10_000  # distinct hashes; a flood of wrong keys clears the cache rather than growing it


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyChecker(Protocol):
    """What the HTTP layer needs: is auth on, and whose key is this."""

    def auth_required(self) -> bool: ...

    def verify(self, key: str) -> str | None: ...


class KeyStore:
    """Keys in the embedded database, plus the static ones from the environment."""

    def __init__(self, db: Database, static_keys: list[str] | None = None) -> None:
        self.db = db
        self._static_hashes = [hash_key(k) for k in (static_keys or []) if k]
        self._cache: dict[str, tuple[float, str | None]] = {}  # hash -> (looked up at, key id or None)
        self._required: tuple[float, bool] | None = None

    def _forget(self) -> None:
        self._cache.clear()
        self._required = None

    def create(self, name: str) -> tuple[KeyRecord, str]:
        """Make a key; the plaintext is returned once and never stored. The key's webhook secret
        is made with it (`webhook_secret`)."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + secrets.token_hex(6),
            name=name,
            prefix=plaintext[:10],
            created_at=time.time(),
            revoked_at=None,
        )
        self.db.execute(
            "INSERT INTO api_keys (id, name, prefix, key_hash, created_at, webhook_secret) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.name, record.prefix, hash_key(plaintext), record.created_at, generate_secret()),
        )
        self._forget()
        return record, plaintext

    def list(self) -> list[KeyRecord]:
        rows = self.db.execute("SELECT id, name, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at")
        return [KeyRecord(*row) for row in rows]

    def webhook_secret(self, key_id: str) -> str | None:
        """The stored key's webhook signing secret; None for a revoked or unknown key, or one made
        before keys had secrets."""
        rows = self.db.execute("SELECT webhook_secret FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def revoke(self, key_id: str) -> bool:
        rows = self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
            (time.time(), key_id),
        )
        self._forget()
        return bool(rows)

    def auth_required(self) -> bool:
        if self._static_hashes:
            return True
        now = time.monotonic()
        if self._required is None or now - self._required[0] >= CACHE_SECONDS:
            self._required = (now, bool(self.db.execute("SELECT 1 FROM api_keys LIMIT 1")))
        return self._required[1]

    def verify(self, key: str) -> str | None:
        """The key's id ('static-<hash prefix>' for environment keys) when valid and active, else None."""
        digest = hash_key(key)
        for static in self._static_hashes:
            if hmac.compare_digest(static, digest):
                return f"{STATIC_ID_PREFIX}{static[:12]}"  # distinct per key, never the key itself
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        rows = self.db.execute("SELECT id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,))
        key_id = str(rows[0][0]) if rows else None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (now, key_id)
        return key_id
