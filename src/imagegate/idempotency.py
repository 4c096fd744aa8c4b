"""Idempotency-Key: a retried request gets the first one's answer instead of a second (billed)
generation.

Keys are scoped to the caller's API key and the endpoint (generations or edits), not the path, so
`/v1` and `/openai/v1` share them. The first request claims the key with a pending row (atomic in
SQLite, so it holds across worker processes); a duplicate arriving meanwhile waits for that row
to be done. Only successful answers are kept: after an error the key is released, and retrying
generates (nothing was billed for the error).

- A pending claim lives for the request deadline plus a margin (`pending_seconds`), not the
  answer's TTL: a process that crashed mid-request leaves a claim that a retry can take over
  minutes later, not a day.
  Each claim carries its owner's token, so a first owner that outlived its claim cannot
  overwrite or release the row of the request that took over.
- The claim stores a fingerprint of the parsed request (`request_fingerprint`). The same key
  with another request is a 422 (the IETF Idempotency-Key draft), never the other request's
  answer.
- A kept answer remembers the result-store names its URLs point at, so a replay can tell that
  they have expired (results live 1 h by default, answers 24 h). An answer that also carries each
  image as b64_json (`both`, the default) has them re-issued: stored again from its own base64,
  with no second generation (`reissue`); a url-only answer's images are gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

from .db import Database
from .errors import IdempotencyKeyReused, InvalidRequest, UpstreamTimeout
from .imaging import MIME_BY_FORMAT, sniff_format
from .storage import ResultStore

MAX_KEY_LENGTH = 255
POLL_SECONDS = 0.05
# A pending claim outlives the request deadline by as long again, at most this much: past the
# deadline the request has answered (504 at the latest), so a claim still pending then belongs
# to a process that died. The margin covers what runs after the deadline check (converting,
# storing, writing usage).
MAX_PENDING_MARGIN_SECONDS = 60.0


def pending_seconds(deadline_seconds: float) -> float:
    """How long a claim stays pending before another request may take it over."""
    return deadline_seconds + min(deadline_seconds, MAX_PENDING_MARGIN_SECONDS)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    results: tuple[str, ...] = ()  # result-store names the body's URLs point at


@dataclass(frozen=True)
class _Row:
    fingerprint: str | None  # None for rows kept before fingerprints existed
    response: StoredResponse | None  # None while pending


class IdempotencyStore:
    def __init__(self, db: Database, ttl_seconds: float) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds

    def _claim(self, scope: str, fingerprint: str, owner: str, pending_seconds: float) -> bool:
        now = time.time()
        self.db.execute("DELETE FROM idempotency WHERE scope = ? AND expires_at <= ?", (scope, now))
        rows = self.db.execute(
            "INSERT OR IGNORE INTO idempotency (scope, state, expires_at, fingerprint, claim) "
            "VALUES (?, 'pending', ?, ?, ?) RETURNING scope",
            (scope, now + pending_seconds, fingerprint, owner),
        )
        return bool(rows)

    def _load(self, scope: str) -> _Row | None:
        rows = self.db.execute(
            "SELECT state, status, headers, body, fingerprint, results FROM idempotency "
            "WHERE scope = ? AND expires_at > ?",
            (scope, time.time()),
        )
        if not rows:
            return None
        state, status, headers, body, fingerprint, results = rows[0]
        if state != "done":
            return _Row(fingerprint, None)
        names = tuple(json.loads(results)) if results else ()
        return _Row(fingerprint, StoredResponse(int(status), json.loads(headers), bytes(body), names))

    def _finish(self, scope: str, owner: str, response: StoredResponse) -> None:
        """Keep the answer for the TTL (from now: a claim's expiry was only the deadline's)."""
        self.db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ?, results = ?, expires_at = ? "
            "WHERE scope = ? AND claim = ? AND state = 'pending'",
            (
                response.status,
                json.dumps(response.headers),
                response.body,
                json.dumps(list(response.results)),
                time.time() + self.ttl_seconds,
                scope,
                owner,
            ),
        )

    def reissue(self, scope: str, response: StoredResponse, store: ResultStore) -> StoredResponse | None:
        """The kept answer with each expired result stored again from the answer's own b64_json,
        under a new URL, and kept so in place of the old one; None when an expired image has no
        b64_json (its bytes are gone). May raise StorageFull, like any result being stored."""
        reissued = reissue_results(response, store)
        if reissued is not None:
            self.db.execute(
                "UPDATE idempotency SET body = ?, results = ? WHERE scope = ? AND state = 'done'",
                (reissued.body, json.dumps(list(reissued.results)), scope),
            )
        return reissued

    def purge_expired(self) -> int:
        return len(self.db.execute("DELETE FROM idempotency WHERE expires_at <= ? RETURNING scope", (time.time(),)))

    def _release(self, scope: str, owner: str) -> None:
        self.db.execute("DELETE FROM idempotency WHERE scope = ? AND claim = ? AND state = 'pending'", (scope, owner))

    async def run_once(
        self, scope: str, fingerprint: str, produce: Callable[[], Awaitable[StoredResponse]], deadline_seconds: float
    ) -> tuple[StoredResponse, bool]:
        """(response, replayed): the stored answer for `scope`, or `produce()`'s, stored if it succeeded.

        `deadline_seconds` is the request deadline: how long a duplicate waits for a running first
        request, and (plus a margin) how long a claim stays pending before another may take it.
        A waiting duplicate keeps trying to claim, so it takes over a dead process's claim."""
        owner = secrets.token_hex(8)
        pending = pending_seconds(deadline_seconds)
        give_up = time.monotonic() + deadline_seconds
        while True:
            if await anyio.to_thread.run_sync(self._claim, scope, fingerprint, owner, pending):
                try:
                    response = await produce()
                except BaseException:
                    await anyio.to_thread.run_sync(self._release, scope, owner)
                    raise
                if response.status == 200:
                    await anyio.to_thread.run_sync(self._finish, scope, owner, response)
                else:
                    await anyio.to_thread.run_sync(self._release, scope, owner)
                return response, False
            found = await anyio.to_thread.run_sync(self._load, scope)
            if found is not None and found.fingerprint not in (None, fingerprint):
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was already used for a different request. Send a new key for a new "
                    "request (a retry must repeat its request exactly).",
                    param="Idempotency-Key",
                )
            if found is not None and found.response is not None:
                return found.response, True
            if time.monotonic() > give_up:
                raise UpstreamTimeout(
                    "A request with this Idempotency-Key is still running.",
                    param="Idempotency-Key",
                    code="idempotency_key_in_use",
                )
            await asyncio.sleep(POLL_SECONDS)  # the first request is still generating


ENDPOINTS = {"t2i": "images/generations", "edit": "images/edits"}


def idempotency_scope(key: str, key_id: str | None, mode: str) -> str:
    """The key's scope: the caller and the endpoint (by request mode, so every mount shares it)."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return f"{key_id or '-'}|{ENDPOINTS.get(mode, mode)}|{key}"


def _source_digest(source: bytes | str) -> str:
    """An uploaded image by its bytes, a URL or data URI by its text (surrogates kept, never a crash)."""
    if isinstance(source, bytes):
        return "bytes:" + hashlib.sha256(source).hexdigest()
    return "url:" + hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def request_fingerprint(
    mode: str, params: dict[str, Any], images: Sequence[bytes | str], mask: bytes | str | None
) -> str:
    """A digest of the parsed request: its fields as canonical JSON plus a digest of each image and
    the mask. Parsed, not raw: a retried multipart upload has another boundary, a retried JSON
    body may order its keys differently, and both are still the same request."""
    document = {
        "mode": mode,
        "params": params,
        "images": [_source_digest(s) for s in images],
        "mask": None if mask is None else _source_digest(mask),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def result_name(url: str | None, store: ResultStore | None = None) -> str | None:
    """The result-store name behind one hosted URL: one of the store's own (a presigned S3 URL),
    else a gateway result URL (`.../v1/results/<name>`); None for inline data URIs and no URL."""
    if not url or not url.startswith(("http://", "https://")):
        return None
    if store is not None and (name := store.name_of(url)) is not None:
        return name
    _, sep, name = urlsplit(url).path.rpartition("/results/")
    return name if sep and name else None


def result_names(urls: Iterable[str | None], store: ResultStore | None = None) -> tuple[str, ...]:
    """The result-store names behind an answer's hosted URLs (see `result_name`)."""
    return tuple(name for url in urls if (name := result_name(url, store)) is not None)


def results_still_served(store: ResultStore, names: Iterable[str]) -> bool:
    """Whether every result a kept answer points at is still served (not expired, not evicted)."""
    return all(store.get(name) is not None for name in names)


def reissue_results(response: StoredResponse, store: ResultStore) -> StoredResponse | None:
    """`response` with every hosted URL whose result has expired pointing at the same image stored
    again from the item's b64_json; None if such an item has no (valid) b64_json."""
    body = json.loads(response.body)
    names = []
    for item in body.get("data", []):
        url = item.get("url")
        name = result_name(url, store)
        if name is None:
            continue
        if store.get(name) is None:
            try:
                data = base64.b64decode(item.get("b64_json") or "", validate=True)
            except (binascii.Error, ValueError):
                return None
            fmt = sniff_format(data)
            if fmt is None:
                return None
            name = store.put(data, MIME_BY_FORMAT[fmt])
            new_url = store.public_url(name)
            if new_url is None and store.name_of(url) is not None:
                # A presigned URL, and presigning is off since: no gateway base to build one on.
                store.delete(name)
                return None
            item["url"] = new_url or url[: url.rindex("/results/")] + f"/results/{name}"
        names.append(name)
    text = json.dumps(body, separators=(",", ":"))
    return StoredResponse(response.status, response.headers, text.encode(), tuple(names))
