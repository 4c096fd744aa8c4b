"""Idempotency-Key: a retried request gets the first one's answer instead of a second (billed)
generation.

Keys are scoped to the caller's API key and the endpoint. The first request claims the key with
a pending row (atomic in SQLite, so it holds across worker processes); a duplicate arriving
meanwhile waits for that row to be done. Only successful answers are kept: after an error the
key is released, and retrying generates (nothing was billed for the error).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread

from .db import Database
from .errors import InvalidRequest, UpstreamTimeout

MAX_KEY_LENGTH = 255
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class IdempotencyStore:
    def __init__(self, db: Database, ttl_seconds: float) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds

    def _claim(self, scope: str) -> bool:
        now = time.time()
        self.db.execute("DELETE FROM idempotency WHERE scope = ? AND expires_at <= ?", (scope, now))
        rows = self.db.execute(
            "INSERT OR IGNORE INTO idempotency (scope, state, expires_at) VALUES (?, 'pending', ?) RETURNING scope",
            (scope, now + self.ttl_seconds),
        )
        return bool(rows)

    def _load(self, scope: str) -> tuple[str, StoredResponse | None] | None:
        rows = self.db.execute("SELECT state, status, headers, body FROM idempotency WHERE scope = ?", (scope,))
        if not rows:
            return None
        state, status, headers, body = rows[0]
        if state != "done":
            return state, None
        return state, StoredResponse(int(status), json.loads(headers), bytes(body))

    def _finish(self, scope: str, response: StoredResponse) -> None:
        self.db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ? WHERE scope = ?",
            (response.status, json.dumps(response.headers), response.body, scope),
        )

    def purge_expired(self) -> int:
        return len(self.db.execute("DELETE FROM idempotency WHERE expires_at <= ? RETURNING scope", (time.time(),)))

    def _release(self, scope: str) -> None:
        self.db.execute("DELETE FROM idempotency WHERE scope = ? AND state = 'pending'", (scope,))

    async def run_once(
        self, scope: str, produce: Callable[[], Awaitable[StoredResponse]], wait_seconds: float
    ) -> tuple[StoredResponse, bool]:
        """(response, replayed): the stored answer for `scope`, or `produce()`'s, stored if it succeeded."""
        deadline = time.monotonic() + wait_seconds
        while True:
            if await anyio.to_thread.run_sync(self._claim, scope):
                try:
                    response = await produce()
                except BaseException:
                    await anyio.to_thread.run_sync(self._release, scope)
                    raise
                if response.status == 200:
                    await anyio.to_thread.run_sync(self._finish, scope, response)
                else:
                    await anyio.to_thread.run_sync(self._release, scope)
                return response, False
            found = await anyio.to_thread.run_sync(self._load, scope)
            if found is not None and found[1] is not None:
                return found[1], True
            if time.monotonic() > deadline:
                raise UpstreamTimeout("A request with this Idempotency-Key is still running.",
                                      param="Idempotency-Key", code="idempotency_key_in_use")
            await asyncio.sleep(POLL_SECONDS)  # the first request is still generating


def idempotency_scope(key: str, key_id: str | None, path: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
                             param="Idempotency-Key", code="invalid_idempotency_key")
    return f"{key_id or '-'}|{path}|{key}"
