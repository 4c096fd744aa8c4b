"""Where results live so they can be served as URLs: a local directory plus an SQLite index.

Tokens are 256-bit random, so a URL is unguessable; each result expires after a configurable
time and is then neither served nor kept. S3-compatible storage can replace this class.

The directory has a size budget (IMAGEGATE_RESULTS_MAX_BYTES): sustained url-format load writes
hundreds of MB/s, which would fill a disk long before the TTL frees anything. Each put first
claims its size in one transaction, evicting expired and then the oldest results to make room
(the running total is kept by triggers, and claims of writes in progress by every worker process
are rows of `result_reservations`, so the check is a couple of row reads, not a SUM). The file is
written under a temporary name and renamed when complete; only then is its row inserted. A result
that cannot be kept (larger than the budget, a full disk) is StorageFull, a 503, with nothing left
behind.

The index, expiry and budget are `IndexedResultStore`'s, whatever holds the bytes: the local
directory here, or an S3 bucket (s3store.py, IMAGEGATE_RESULTS_URL=s3://...); `open_result_store`
picks one from the settings. A `StoredResult` is read the same way from either.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import psycopg

from .db import Database, DatabaseError
from .errors import StorageFull, StorageUnavailable
from .imaging import FORMAT_BY_MIME, ImageBytes

log = logging.getLogger("imagegate")
GIB = 1024**3
DEFAULT_SHARE_OF_FREE_SPACE = 0.5
DEFAULT_MAX_BYTES_CAP = 50 * GIB
RESERVATION_SECONDS = 120.0  # a claim older than this belongs to a write that died with its process
EVICTION_BATCH = 64
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
RETRY_AFTER_SECONDS = 30.0
TEMP_SUFFIX = ".tmp"
CHUNK_BYTES = 256 * 1024  # what a streamed result is read in

if TYPE_CHECKING:
    from .config import Settings


@dataclass(frozen=True)
class StoredResult:
    """A live result. A local one is a file (`path`: served with sendfile); any other is read
    through `opener`, which returns its body as a file object (an S3 object's stream)."""

    path: Path | None
    content_type: str
    size: int = 0  # bytes, when known (0: rows from before sizes were kept)
    opener: Callable[[], IO[bytes]] | None = None

    def open(self) -> IO[bytes]:
        """The result's bytes as a file object. FileNotFoundError when it is gone meanwhile
        (purged, evicted); blocking, so call it in a thread."""
        if self.path is not None:
            return self.path.open("rb")
        assert self.opener is not None
        return self.opener()

    def read(self) -> bytes:
        with self.open() as body:
            return body.read()


def iter_body(body: IO[bytes]) -> Iterator[bytes]:
    """An opened result's bytes a chunk at a time, closing it when done or dropped (a client
    that goes away mid-download closes the generator)."""
    try:
        while chunk := body.read(CHUNK_BYTES):
            yield chunk
    finally:
        body.close()


class ResultStore(Protocol):
    """What the service needs from a result store: the local directory or an S3 bucket."""

    def put(self, data: bytes | ImageBytes, content_type: str) -> str: ...

    def get(self, name: str) -> StoredResult | None: ...

    def delete(self, name: str) -> None: ...

    def purge_expired(self) -> int: ...

    def expire_at(self, names: list[str], expires_at: float) -> None: ...

    def public_url(self, name: str) -> str | None:
        """A URL of the store's own for the result (a presigned S3 URL), or None: the gateway's
        `/v1/results/<name>` URL serves it."""
        ...

    def name_of(self, url: str) -> str | None:
        """The result name behind a URL `public_url` made, None for any other URL."""
        ...

    def check(self) -> None:
        """StorageUnavailable unless results can be stored now (for a readiness check)."""
        ...


def default_max_bytes(directory: Path) -> int:
    """Half the free space of the directory's filesystem now, at most 50 GiB."""
    return min(int(shutil.disk_usage(directory).free * DEFAULT_SHARE_OF_FREE_SPACE), DEFAULT_MAX_BYTES_CAP)


def _write_chunk(fd: int, data: memoryview) -> int:
    """The one OS write of the store (a seam for tests that fill the disk)."""
    return os.write(fd, data)


def _write_new_file(path: Path, data: bytes | ImageBytes) -> None:
    """Bytes as they are; an ImageBytes still in base64 decoded a chunk at a time as it is written
    (no second whole copy of a 30 MB image in memory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in data.chunks() if isinstance(data, ImageBytes) else (data,):
            view = memoryview(chunk)
            while view:
                view = view[_write_chunk(fd, view) :]
    finally:
        os.close(fd)


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if isinstance(exc, psycopg.errors.DiskFull):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _storage_full(detail: str) -> StorageFull:
    return StorageFull(
        f"The gateway cannot store this result now: {detail}. Try again later, or ask for response_format=b64_json.",
        retry_after=RETRY_AFTER_SECONDS,
    )


class IndexedResultStore:
    """The database index of results, their expiry and the size budget, whatever holds the bytes.

    A row's `path` is where its bytes are (a file path, an object key); subclasses write, open
    and remove them (`_result`, `_remove`).
    """

    def __init__(self, db: Database, ttl_seconds: float, max_bytes: int) -> None:
        """`max_bytes`: the size budget; 0 means no budget."""
        self.db = db
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        # The total starts as the sum of what is stored (rows from before sizes were kept count 0).
        self.db.execute("INSERT OR IGNORE INTO results_total (id, bytes) SELECT 1, COALESCE(SUM(size), 0) FROM results")

    # -- what a subclass provides --

    def _result(self, path: str, content_type: str, size: int) -> StoredResult | None:
        raise NotImplementedError

    def _remove(self, paths: list[str]) -> None:
        """Remove these results' bytes (their rows are gone); never raises for one already gone."""
        raise NotImplementedError

    # -- the index --

    def _index(self, name: str, path: str, content_type: str, size: int, claim: str | None) -> None:
        """The row that makes a written result live, its space claim turned into its size."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO results (token, path, content_type, created_at, expires_at, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, path, content_type, now, now + self.ttl_seconds, size),
            )
            if claim is not None:
                conn.execute("DELETE FROM result_reservations WHERE id = ?", (claim,))

    def _claim(self, size: int) -> str | None:
        """Room for `size` more bytes under the budget, evicting to make it; None with no budget."""
        if not self.max_bytes:
            return None
        if size > self.max_bytes:
            raise _storage_full(
                f"the result ({size} bytes) is larger than the store's budget "
                f"(IMAGEGATE_RESULTS_MAX_BYTES={self.max_bytes})"
            )
        claim = secrets.token_hex(8)
        now = time.time()
        try:
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM result_reservations WHERE expires_at <= ?", (now,))
                evicted = self._make_room(conn, size, now)
                conn.execute(
                    "INSERT INTO result_reservations (id, bytes, expires_at) VALUES (?, ?, ?)",
                    (claim, size, now + RESERVATION_SECONDS),
                )
        except DatabaseError as exc:
            if _is_full(exc):
                raise _storage_full("the database's disk is full") from exc
            raise
        self._remove(evicted)  # after the commit: a rolled-back eviction must not lose files
        return claim

    def _make_room(self, conn: sqlite3.Connection, size: int, now: float) -> list[str]:
        """Delete expired, then oldest, rows until `size` fits; returns their paths. StorageFull if
        even an empty store has no room (the rest is claimed by writes in progress)."""
        evicted: list[str] = []
        excess = self._used(conn) + size - self.max_bytes
        if excess <= 0:
            return evicted
        for path, freed in conn.execute("DELETE FROM results WHERE expires_at <= ? RETURNING path, size", (now,)):
            evicted.append(path)
            excess -= freed
        while excess > 0:
            oldest = conn.execute(
                "SELECT token, path, size FROM results ORDER BY created_at LIMIT ?", (EVICTION_BATCH,)
            ).fetchall()
            if not oldest:
                raise _storage_full("the store's budget is taken by results being written")
            for token, path, freed in oldest:
                conn.execute("DELETE FROM results WHERE token = ?", (token,))
                evicted.append(path)
                excess -= freed
                if excess <= 0:
                    break
        return evicted

    @staticmethod
    def _used(conn: sqlite3.Connection) -> int:
        stored = conn.execute("SELECT bytes FROM results_total WHERE id = 1").fetchone()
        claimed = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM result_reservations").fetchone()
        return int(stored[0] if stored else 0) + int(claimed[0])

    def _release(self, claim: str | None) -> None:
        if claim is None:
            return
        try:
            self.db.execute("DELETE FROM result_reservations WHERE id = ?", (claim,))
        except DatabaseError:
            log.warning("result store: could not release a space claim; it expires in %.0f s", RESERVATION_SECONDS)

    def stored_bytes(self) -> int:
        rows = self.db.execute("SELECT bytes FROM results_total WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def get(self, name: str) -> StoredResult | None:
        """The live result of that name: one row read (an expired row is never served)."""
        rows = self.db.execute(
            "SELECT path, content_type, size FROM results WHERE token = ? AND expires_at > ?", (name, time.time())
        )
        if not rows:
            return None
        path, content_type, size = rows[0]
        return self._result(path, content_type, int(size or 0))

    def delete(self, name: str) -> None:
        """Forget a result and free its space (a request that could not store all its images)."""
        rows = self.db.execute("DELETE FROM results WHERE token = ? RETURNING path", (name,))
        self._remove([path for (path,) in rows])

    def expire_at(self, names: list[str], expires_at: float) -> None:
        """Move these results' expiry (an async job's results live the TTL from the job's end)."""
        for name in names:
            self.db.execute("UPDATE results SET expires_at = ? WHERE token = ?", (expires_at, name))

    def purge_expired(self) -> int:
        rows = self.db.execute("DELETE FROM results WHERE expires_at <= ? RETURNING path", (time.time(),))
        self._remove([path for (path,) in rows])
        return len(rows)

    def public_url(self, name: str) -> str | None:
        return None

    def name_of(self, url: str) -> str | None:
        return None


class LocalResultStore(IndexedResultStore):
    def __init__(self, db: Database, directory: Path, ttl_seconds: float, max_bytes: int | None = 0) -> None:
        """`max_bytes`: the size budget; None picks `default_max_bytes`, 0 means no budget."""
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(db, ttl_seconds, default_max_bytes(directory) if max_bytes is None else max_bytes)
        self._remove_stale_temp_files()

    def put(self, data: bytes | ImageBytes, content_type: str) -> str:
        """Store bytes; returns the file name to put in the URL (token plus extension)."""
        ext = FORMAT_BY_MIME.get(content_type, "bin")
        name = f"{secrets.token_urlsafe(32)}.{ext}"
        path = self.directory / name
        size = data.size() if isinstance(data, ImageBytes) else len(data)
        claim = self._claim(size)
        temp = self.directory / f".{name}{TEMP_SUFFIX}"  # never a token: tokens do not start with "."
        try:
            _write_new_file(temp, data)
            os.replace(temp, path)
        except BaseException as exc:  # OSError, or base64 that turns out broken (binascii.Error)
            temp.unlink(missing_ok=True)
            self._release(claim)
            if not isinstance(exc, OSError):
                raise
            if _is_full(exc):
                log.error("result store: the disk is full (%s); answering 503 storage_full", exc)
                raise _storage_full("the disk is full") from exc
            raise
        try:
            self._index(name, str(path), content_type, size, claim)
        except DatabaseError as exc:
            path.unlink(missing_ok=True)
            self._release(claim)
            if _is_full(exc):
                raise _storage_full("the database's disk is full") from exc
            raise
        return name

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of writes that died with their process (not those of other workers)."""
        cutoff = time.time() - RESERVATION_SECONDS
        for temp in self.directory.glob(f".*{TEMP_SUFFIX}"):
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except OSError:
                pass

    def _result(self, path: str, content_type: str, size: int) -> StoredResult | None:
        file = Path(path)
        return StoredResult(file, content_type, size) if file.exists() else None

    def _remove(self, paths: list[str]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StorageUnavailable(
                f"The result directory {self.directory} is not writable.", retry_after=RETRY_AFTER_SECONDS
            )


def open_result_store(settings: Settings, db: Database) -> ResultStore:
    """The store IMAGEGATE_RESULTS_URL names: an S3 bucket (`s3://bucket/prefix`), else the local
    directory `<data dir>/results`."""
    if settings.results_url:
        from .s3store import S3ResultStore  # boto3 is imported only when S3 is used

        return S3ResultStore.from_settings(settings, db)
    return LocalResultStore(
        db, settings.data_dir / "results", settings.result_ttl_seconds, max_bytes=settings.results_max_bytes
    )
