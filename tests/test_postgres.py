"""PostgreSQL behind `db.Database`: the SQL translation, versioned migrations and the refusal to
start on an unmigrated database, and every store's statements on a real PostgreSQL server
(tests/backends.py), including what the stores' transactions rely on (one writer at a time)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from imagegate import db as dbm
from imagegate.config import Settings
from imagegate.errors import ConfigurationError
from imagegate.idempotency import IdempotencyStore
from imagegate.keys import KeyStore
from imagegate.storage import LocalResultStore
from imagegate.usage import UsageLog, UsageRecord

from .test_cli import invoke, ok


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path) -> dbm.PostgresDatabase:
    dbm.migrate(postgres_url)
    database = dbm.PostgresDatabase(postgres_url, tmp_path / "data" / "imagegate.db")
    yield database
    database.close()


def usage(request_id: str, images: int = 1, cost: float = 0.1, key_id: str | None = None) -> UsageRecord:
    return UsageRecord(request_id, key_id, "someone", "m", "gemini", "t2i", images, cost, 3, 4)


# --- translation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT a FROM t WHERE b = ? AND c > ?", "SELECT a FROM t WHERE b = %s AND c > %s"),
        ("SELECT a FROM t WHERE b LIKE 'x%'", "SELECT a FROM t WHERE b LIKE 'x%%'"),
        ("INSERT OR IGNORE INTO t (a) VALUES (?)", "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING a",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING a",
        ),
        (
            "INSERT INTO usage (request_id, user) VALUES (?, ?)",
            'INSERT INTO usage (request_id, "user") VALUES (%s, %s)',
        ),
        ('SELECT "user", user_id FROM usage', 'SELECT "user", user_id FROM usage'),
    ],
)
def test_sqlite_dialect_is_translated_for_postgres(sqlite: str, postgres: str) -> None:
    assert dbm.translate_sql(sqlite) == postgres


def test_urls_choose_the_database(tmp_path: Path) -> None:
    sqlite_file = tmp_path / "elsewhere" / "gate.db"
    database = dbm.open_database(Settings(data_dir=tmp_path, database_url=f"sqlite:///{sqlite_file}"))
    try:
        assert database.path == sqlite_file and sqlite_file.exists()
    finally:
        database.close()
    with pytest.raises(ConfigurationError, match="postgresql://"):
        dbm.open_database(Settings(data_dir=tmp_path, database_url="mysql://u:secret@h/db"))


def test_an_unreachable_database_is_one_clear_error_without_the_password(tmp_path: Path) -> None:
    from .backends import free_port

    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    with pytest.raises(ConfigurationError) as caught:
        dbm.PostgresDatabase(url, tmp_path / "x.db")
    assert "Cannot connect" in caught.value.message and "hunter2" not in caught.value.message


# --- migrations --------------------------------------------------------------------------


def test_an_unmigrated_database_is_refused_until_migrated(postgres_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="imagegate migrate") as caught:
        dbm.PostgresDatabase(postgres_url, tmp_path / "x.db")
    assert "0001_initial" in caught.value.message
    assert dbm.pending_migrations(postgres_url) == [p.stem for p in sorted(dbm.MIGRATIONS_DIR.glob("*.sql"))]
    assert dbm.migrate(postgres_url)[0] == "0001_initial"
    assert dbm.pending_migrations(postgres_url) == []
    assert dbm.migrate(postgres_url) == []  # a second run changes nothing
    dbm.PostgresDatabase(postgres_url, tmp_path / "x.db").close()


def test_cli_migrate_then_serve_check(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_DATABASE_URL", postgres_url)
    refused = invoke("serve", "--port", "1")  # stops before serving: the database is not migrated
    # rich wraps the message at the terminal's width: read it as one line
    assert refused.exit_code == 1 and "imagegate migrate" in " ".join(refused.stderr.split())
    first = ok("migrate")
    assert "applied" in first.stderr and "0001_initial" in first.stderr
    assert "up to date" in ok("migrate").stderr


# --- the stores on PostgreSQL ----------------------------------------------------------------


def test_keys_on_postgres(pg: dbm.PostgresDatabase) -> None:
    store = KeyStore(pg)
    record, key = store.create("ci")
    assert store.verify(key) == record.id and store.auth_required()
    assert [k.name for k in store.list()] == ["ci"]
    assert (store.webhook_secret(record.id) or "").startswith("whsec_")
    other_instance = KeyStore(pg)
    assert other_instance.verify(key) == record.id
    assert store.revoke(record.id) and not store.revoke(record.id)
    assert store.verify(key) is None


def test_usage_on_postgres_inline_and_journaled(pg: dbm.PostgresDatabase) -> None:
    inline = UsageLog(pg)
    inline.record(usage("r1", images=2, cost=0.5, key_id="k1"))
    journaled = UsageLog(pg, background=True)
    journaled.record(usage("r2", images=1, cost=0.25, key_id="k2"))
    journaled.close()
    totals = {t.group["key"]: t for t in inline.totals(0, time.time() + 1, ["key"])}
    assert (totals["k1"].images, totals["k1"].cost, totals["k2"].images) == (2, 0.5, 1)
    (row,) = pg.execute('SELECT "user", created_at FROM usage WHERE request_id = ?', ("r1",))
    assert row[0] == "someone" and abs(row[1] - time.time()) < 60  # a double, not a 4-byte REAL
    assert journaled.flush() == 0 and len(pg.execute("SELECT id FROM usage")) == 2  # none twice


def test_result_budget_and_expiry_on_postgres(pg: dbm.PostgresDatabase, tmp_path: Path) -> None:
    store = LocalResultStore(pg, tmp_path / "results", ttl_seconds=60, max_bytes=1000)
    first = store.put(b"a" * 600, "image/png")
    second = store.put(b"b" * 600, "image/png")  # evicts the first to fit the budget
    assert store.get(first) is None and store.get(second) is not None
    assert store.stored_bytes() == 600
    pg.execute("UPDATE results SET expires_at = ? WHERE token = ?", (time.time() - 1, second))
    assert store.get(second) is None and store.purge_expired() == 1 and store.stored_bytes() == 0


def test_idempotency_claims_on_postgres(pg: dbm.PostgresDatabase) -> None:
    one, two = IdempotencyStore(pg, 60), IdempotencyStore(pg, 60)
    assert one._claim("scope", "fp", "owner-1", 30)
    assert not two._claim("scope", "fp", "owner-2", 30)  # another instance sees the claim


def test_transactions_are_one_writer_at_a_time(pg: dbm.PostgresDatabase) -> None:
    """Two threads read-check-write the same counter in transactions: without the write lock
    PostgreSQL's READ COMMITTED would let both read the same value and lose an increment."""
    pg.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    pg.execute("INSERT INTO counter (n) VALUES (0)")

    def bump(times: int) -> None:
        for _ in range(times):
            with pg.transaction() as conn:
                (n,) = conn.execute("SELECT n FROM counter").fetchone()
                time.sleep(0.001)
                conn.execute("UPDATE counter SET n = ?", (n + 1,))

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pg.execute("SELECT n FROM counter")[0][0] == 50


def test_a_failing_transaction_changes_nothing(pg: dbm.PostgresDatabase) -> None:
    with pytest.raises(dbm.DatabaseError), pg.transaction() as conn:
        conn.execute("INSERT INTO result_reservations (id, bytes, expires_at) VALUES (?, ?, ?)", ("x", 1, 0.0))
        conn.execute("INSERT INTO result_reservations (id, bytes, expires_at) VALUES (?, ?, ?)", ("x", 1, 0.0))
    assert pg.execute("SELECT id FROM result_reservations") == []
