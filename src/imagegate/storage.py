"""Where results live so they can be served as URLs: a local directory plus an SQLite index.

Tokens are 256-bit random, so a URL is unguessable; each result expires after a configurable
time and is then neither served nor kept. S3-compatible storage can replace this class.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .db import Database
from .imaging import FORMAT_BY_MIME


@dataclass(frozen=True)
class StoredResult:
    path: Path
    content_type: str


class ResultStore(Protocol):
    """What the service needs from a result store; S3-compatible storage can implement it."""

    def put(self, data: bytes, content_type: str) -> str: ...

    def get(self, name: str) -> StoredResult | None: ...

    def purge_expired(self) -> int: ...


class LocalResultStore:
    def __init__(self, db: Database, directory: Path, ttl_seconds: float) -> None:
        self.db = db
        self.directory = directory
        self.ttl_seconds = ttl_seconds
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, content_type: str) -> str:
        """Store bytes; returns the file name to put in the URL (token plus extension)."""
        ext = FORMAT_BY_MIME.get(content_type, "bin")
        name = f"{secrets.token_urlsafe(32)}.{ext}"
        path = self.directory / name
        path.write_bytes(data)
        now = time.time()
        self.db.execute(
            "INSERT INTO results (token, path, content_type, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (name, str(path), content_type, now, now + self.ttl_seconds),
        )
        return name

    def get(self, name: str) -> StoredResult | None:
        rows = self.db.execute(
            "SELECT path, content_type FROM results WHERE token = ? AND expires_at > ?", (name, time.time())
        )
        if not rows:
            return None
        path = Path(rows[0][0])
        return StoredResult(path, rows[0][1]) if path.exists() else None

    def purge_expired(self) -> int:
        rows = self.db.execute("DELETE FROM results WHERE expires_at <= ? RETURNING path", (time.time(),))
        for (path,) in rows:
            Path(path).unlink(missing_ok=True)
        return len(rows)
