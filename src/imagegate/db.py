"""The embedded SQLite database behind the default key store, result store and usage log.

One connection guarded by a lock; callers in async code go through `run()`, which moves the
blocking call to a worker thread. PostgreSQL can replace it behind the same small interfaces.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")
# What a failing database raises, whichever engine it is (the PostgreSQL backend adds psycopg.Error).
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error,)

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS results (
    token TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);
-- The result store's size budget (storage.py): the total of results.size kept by triggers, so a
-- put reads one row instead of summing the table, and space claimed by writes in progress.
CREATE INDEX IF NOT EXISTS results_age ON results (created_at);
CREATE TABLE IF NOT EXISTS results_total (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS results_total_insert AFTER INSERT ON results
    BEGIN UPDATE results_total SET bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS results_total_delete AFTER DELETE ON results
    BEGIN UPDATE results_total SET bytes = bytes - OLD.size; END;
CREATE TABLE IF NOT EXISTS result_reservations (
    id TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    key_id TEXT,
    user TEXT,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    mode TEXT NOT NULL,
    images INTEGER NOT NULL,
    cost REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_created ON usage (created_at);
CREATE INDEX IF NOT EXISTS usage_request ON usage (request_id);
-- Async jobs (jobs.py): `request` is what running it later needs (JSON: params, input files or
-- URLs, request ids, base URLs); `result` the images answer as JSON; `error` OpenAI's error object;
-- `owner` the process running it ("<host>:<pid>"), which renews `heartbeat_at` while it does;
-- `usage_counted` 1 once its pipeline recorded usage.
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key_id TEXT,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    request TEXT NOT NULL,
    webhook_url TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    heartbeat_at REAL,
    usage_counted INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key_id, seq);
-- Webhooks (webhooks.py): one row per job event; `id` is the webhook-id, the same on every retry.
-- next_attempt_at is NULL once delivered or given up; lease_until marks a row an attempt holds.
-- secret: what signs it, fixed when the job ended (a stored key's is in api_keys anyway).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at REAL,
    given_up_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at);
CREATE UNIQUE INDEX IF NOT EXISTS webhook_deliveries_job ON webhook_deliveries (job_id);  -- a job ends once
"""

# Columns added after a table first shipped: (table, column, declaration). An existing database
# gets each missing one at open; new databases get them the same way, so SCHEMA stays as shipped.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    # 1 when the serving provider's real price is not known and `cost` is the catalog's estimate.
    ("usage", "cost_estimated", "INTEGER NOT NULL DEFAULT 0"),
    # Idempotency-Key: the request's fingerprint (a key reused for another request is a 422), the
    # claim's owner (a claim that expired and was taken over is not finished by its first owner),
    # and the result-store names the kept answer's URLs point at (JSON list).
    ("idempotency", "fingerprint", "TEXT"),
    ("idempotency", "claim", "TEXT"),
    ("idempotency", "results", "TEXT"),
    # The client's own x-request-id; `request_id` is always the gateway's, unique per request.
    ("usage", "client_request_id", "TEXT"),
    ("usage", "safety_identifier", "TEXT"),  # OpenAI's end-user safety id, recorded like `user`
    ("results", "size", "INTEGER NOT NULL DEFAULT 0"),  # bytes of the file, for the store's budget
    # A stored key's webhook signing secret (whsec_...): kept readable, since HMAC signing needs it.
    ("api_keys", "webhook_secret", "TEXT"),
    # 1 once the answer carrying the row's images was written to its client (usage.py); rows made
    # before this column existed were all counted as delivered.
    ("usage", "delivered", "INTEGER NOT NULL DEFAULT 1"),
]


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL cannot corrupt the database; a power cut may lose the last
        # commits. That trade is right for a result index and usage rows: an fsync per request was
        # a visible share of the url path's time.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)
        self._add_missing_columns()
        self._lock = threading.Lock()

    def _add_missing_columns(self) -> None:
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            return cursor.fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements that read and change the database as one step, for every process sharing
        it (BEGIN IMMEDIATE takes the write lock first); rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
