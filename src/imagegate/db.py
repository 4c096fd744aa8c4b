"""The database behind the key store, result index, usage ledger, idempotency records and jobs.

`Database` is the embedded default: one SQLite file in the data dir, one connection guarded by a
lock, its schema created and extended at open (SCHEMA, ADDED_COLUMNS). `PostgresDatabase`
(IMAGEGATE_DATABASE_URL=postgresql://...) is the shared one for several instances: a connection
pool per process, and a schema of versioned migrations (`migrations/postgresql/*.sql`, applied by
`imagegate migrate`; an instance refuses to start on a database that lacks one).

Both take the same SQL, written once in SQLite's dialect: `PostgresDatabase` translates it
(`translate_sql`: placeholders, `INSERT OR IGNORE`, the reserved word `user`) and gives
`transaction()` the meaning SQLite's BEGIN IMMEDIATE has, one writer at a time (a transaction-
scoped advisory lock), which the stores' read-check-write transactions rely on. Callers in async
code go through `run()`, which moves the blocking call to a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import psycopg

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .config import Settings

# What a failing database raises, whichever it is: the stores catch this, never one driver's class.
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
MIGRATIONS_DIR = Path(__file__).parent / "migrations" / "postgresql"

T = TypeVar("T")

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
-- `owner` the process running it ("<host>:<pid>:<runner>"), which renews `heartbeat_at` while it does;
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
-- A job's uploads (`name` as its `request` refers to it: image-0, mask), kept until it ends, and
-- the events of its stream in order (`seq` from 0 per run), kept a result TTL after it ends.
CREATE TABLE IF NOT EXISTS job_inputs (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
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
-- Delivered marks (usage.py) that came before their usage row (still in another instance's journal).
CREATE TABLE IF NOT EXISTS usage_marks (
    request_id TEXT PRIMARY KEY,
    marked_at REAL NOT NULL
);
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
    # A stored key's policy (keys.py, policy.py; PostgreSQL: migration 0003_key_policies): models is
    # the allow-list as a JSON array (NULL: every model); NULL limits and expiry: none; admin 0/1.
    ("api_keys", "models", "TEXT"),
    ("api_keys", "requests_per_minute", "INTEGER"),
    ("api_keys", "images_per_minute", "INTEGER"),
    ("api_keys", "usd_per_day", "REAL"),
    ("api_keys", "usd_per_month", "REAL"),
    ("api_keys", "expires_at", "REAL"),
    ("api_keys", "admin", "INTEGER NOT NULL DEFAULT 0"),
    ("api_keys", "updated_at", "REAL"),
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


# ---- PostgreSQL ---------------------------------------------------------------------------------

# The advisory lock every write transaction takes: PostgreSQL's stand-in for SQLite's single writer.
WRITE_LOCK_ID = 0x1A6E6A7E
_PLACEHOLDER = re.compile(r"\?")
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_RESERVED = re.compile(r'(?<![\w"])user(?![\w"])')  # the usage table's `user` column


@functools.lru_cache(maxsize=1024)
def translate_sql(sql: str) -> str:
    """The SQLite-dialect SQL the stores write, for PostgreSQL (cached: the stores' statements
    are a fixed few). Placeholders `?` become `%s` (a literal % doubled first); `INSERT OR IGNORE`
    becomes `INSERT ... ON CONFLICT DO NOTHING`; the column `user`, a reserved word there, is
    quoted. Our SQL has no `?`, `%` or `user` inside string literals."""
    text = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
    text = _RESERVED.sub('"user"', text)
    if _INSERT_OR_IGNORE.match(text):
        text = _INSERT_OR_IGNORE.sub("INSERT INTO", text, count=1)
        returning = _RETURNING.search(text)
        if returning is None:
            text = f"{text.rstrip().rstrip(';')} ON CONFLICT DO NOTHING"
        else:
            text = f"{text[: returning.start()]}ON CONFLICT DO NOTHING {text[returning.start() :]}"
    return text


class _PostgresConnection:
    """One pooled connection inside `transaction()`, taking SQLite-dialect SQL like sqlite3's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(translate_sql(sql), params)


class PostgresDatabase(Database):
    """PostgreSQL behind `Database`'s interface. `path` is only where this instance keeps its
    local files next to it (the usage journal and spool), as for SQLite."""

    def __init__(self, url: str, path: Path, *, check_migrated: bool = True, pool_size: int = 10) -> None:
        from psycopg_pool import ConnectionPool

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,  # per process; a statement holds one only while it runs
            kwargs={"autocommit": True},
            open=False,
            name="imagegate",
        )
        try:
            self._pool.open(wait=True, timeout=15.0)
        except psycopg.Error as exc:
            self._pool.close()
            raise ConfigurationError(f"Cannot connect to the database {redact_url(url)}: {exc}") from exc
        if check_migrated:
            pending = pending_migrations(url)
            if pending:
                self._pool.close()
                raise ConfigurationError(
                    f"The database {redact_url(url)} is not migrated: {len(pending)} migration(s) pending "
                    f"({', '.join(pending)}). Run `imagegate migrate` (with the same IMAGEGATE_DATABASE_URL) "
                    "before starting the gateway."
                )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._pool.connection() as conn:
            cursor = conn.execute(translate_sql(sql), params)
            return cursor.fetchall() if cursor.description is not None else []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """As SQLite's BEGIN IMMEDIATE: one writing transaction at a time over every instance
        (the advisory lock is released at commit or rollback), so a transaction's reads still hold
        when it writes. Rolled back on any error."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_ID,))
            yield _PostgresConnection(conn)

    def close(self) -> None:
        self._pool.close()


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _yoyo_url(url: str) -> str:
    """yoyo names the psycopg 3 backend postgresql+psycopg."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def pending_migrations(url: str) -> list[str]:
    """The ids of the migrations this database lacks (empty: up to date)."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(_yoyo_url(url))
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))]
    finally:
        backend.connection.close()


def migrate(url: str) -> list[str]:
    """Apply every pending migration (under yoyo's lock, so two instances migrating at once is
    safe); returns the ids applied."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(_yoyo_url(url))
    try:
        with backend.lock():
            pending = backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


def is_postgres_url(url: str) -> bool:
    return url.split("://", 1)[0] in ("postgres", "postgresql")


def open_database(settings: Settings, *, check_migrated: bool = True) -> Database:
    """The database the settings name: IMAGEGATE_DATABASE_URL (postgresql://... or
    sqlite:///path), else SQLite in the data dir."""
    url = settings.database_url
    if not url:
        return Database(settings.database_path)
    if is_postgres_url(url):
        return PostgresDatabase(
            url, settings.database_path, check_migrated=check_migrated, pool_size=settings.database_pool_size
        )
    if url.startswith("sqlite:///"):
        return Database(Path(url.removeprefix("sqlite:///")))  # sqlite:////abs/path or sqlite:///relative
    raise ConfigurationError(
        f"IMAGEGATE_DATABASE_URL must be postgresql://user:password@host:port/database or sqlite:///path, "
        f"not {redact_url(url)!r}"
    )
