"""Delivered marks in the usage journal (usage.py), and the running writer claiming the journals
of dead processes of its data dir.

Exact usage under crashes: every paid request's row is in the journal before its answer goes out,
its delivered mark after; a process killed at any point leaves a journal that one running writer
inserts exactly once, each row delivered or not as its client saw it.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate import usage as usage_module
from imagegate.db import Database
from imagegate.usage import UsageLog, UsageRecord

from .test_usage_writer import kill_9_after


def record(request_id: str, images: int = 1) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        key_id="k",
        user=None,
        model="m",
        provider="gemini",
        mode="t2i",
        images=images,
        cost=0.134 * images,
        input_tokens=1,
        output_tokens=2,
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "imagegate.db")
    yield database
    database.close()


def delivered(db: Database) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in db.execute("SELECT request_id, delivered FROM usage ORDER BY id")}


def count(db: Database) -> int:
    return int(db.execute("SELECT COUNT(*) FROM usage")[0][0])


def statements(db: Database) -> list[str]:
    """Every SQL statement the database's connection runs from now on."""
    seen: list[str] = []
    db._conn.set_trace_callback(seen.append)
    return seen


def wait_until(check: object, what: str, timeout: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_mark_in_the_same_flush_inserts_the_row_as_delivered_with_no_update(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_module, "FLUSH_SECONDS", 3600.0)  # only close() flushes
    log = UsageLog(db, background=True)
    log.record(record("sent"))
    log.record(record("lost"))
    log.mark_delivered("sent")
    seen = statements(db)
    log.close()
    assert delivered(db) == {"sent": 1, "lost": 0}
    assert not [sql for sql in seen if sql.lstrip().upper().startswith("UPDATE")]


def test_a_later_mark_updates_the_row_by_request_id(db: Database) -> None:
    log = UsageLog(db, background=True)
    log.record(record("r1"))
    log.flush()
    assert delivered(db) == {"r1": 0}
    log.mark_delivered("r1")
    log.close()
    assert delivered(db) == {"r1": 1}


def test_the_inline_writer_marks_with_an_update(db: Database) -> None:
    log = UsageLog(db)
    log.record(record("r1"))
    log.record(record("r2"))
    log.mark_delivered("r2")
    assert delivered(db) == {"r1": 0, "r2": 1}


def test_a_mark_whose_row_is_still_spooled_finds_it_once_the_database_is_back(db: Database) -> None:
    """The row went to the spool (the database refused it); its mark comes in a later flush,
    which puts the spool in first."""
    log = UsageLog(db, background=True)
    log.record(record("r1"))
    db.execute(
        "CREATE TEMP TRIGGER usage_full BEFORE INSERT ON usage BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    log.flush()
    assert count(db) == 0 and log.spool.exists()
    db.execute("DROP TRIGGER temp.usage_full")
    log.mark_delivered("r1")
    log.close()
    assert delivered(db) == {"r1": 1}


@pytest.mark.parametrize("writer", ["background", "inline"])
def test_a_mark_that_comes_before_its_row_is_applied_when_the_row_comes(db: Database, writer: str) -> None:
    """Another instance may still hold the row in its journal (an idempotent replay, or a re-run
    job, served here of a request recorded there): the mark waits in usage_marks for the row,
    however long the other instance takes to replay its journal."""
    log = UsageLog(db, background=writer == "background")
    log.mark_delivered("elsewhere")
    log.flush()
    assert count(db) == 0
    dead_journal(db, [usage_module._line(1.0, record("elsewhere")), usage_module._line(2.0, record("unmarked"))])
    UsageLog(db)  # that instance starting again on its data dir
    log.close()
    assert delivered(db) == {"elsewhere": 1, "unmarked": 0}


def test_a_line_written_before_marks_existed_counts_as_delivered(db: Database) -> None:
    spool = db.path.with_name(usage_module.SPOOL_NAME)
    fields = {
        "request_id": "old",
        "key_id": None,
        "user": None,
        "model": "m",
        "provider": "fal",
        "mode": "t2i",
        "images": 2,
        "cost": 0.3,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    spool.write_text(json.dumps({"created_at": 5.0, "record": fields}) + "\n")
    UsageLog(db)
    assert delivered(db) == {"old": 1}


def test_rows_from_before_the_column_are_delivered(tmp_path: Path) -> None:
    """An existing database gets the column with 1 for the rows it has (db.ADDED_COLUMNS)."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE usage (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, created_at REAL "
            "NOT NULL, key_id TEXT, user TEXT, model TEXT NOT NULL, provider TEXT NOT NULL, mode TEXT NOT NULL, "
            "images INTEGER NOT NULL, cost REAL NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO usage VALUES (1, 'before', 1.0, NULL, NULL, 'm', 'p', 't2i', 1, 0.1, 0, 0)")
    database = Database(path)
    try:
        assert delivered(database) == {"before": 1}
    finally:
        database.close()


def dead_journal(db: Database, lines: list[str]) -> Path:
    path = db.path.with_name(f"{usage_module.JOURNAL_PREFIX}999999999.jsonl")  # no such pid
    path.write_text("".join(lines))
    return path


def test_a_running_writer_claims_a_dead_processs_journal_without_a_restart(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_module, "SWEEP_SECONDS", 0.05)
    first, second = UsageLog(db, background=True), UsageLog(db, background=True)  # two workers of one data dir
    journal = dead_journal(
        db,
        [
            usage_module._line(1.0, record("answered")),
            usage_module._line(2.0, record("cut-off")),
            usage_module._mark_line("answered"),
        ],
    )
    wait_until(lambda: count(db) == 2 and not journal.exists(), "the dead journal's rows")
    time.sleep(0.2)  # several more sweeps of both writers
    first.close()
    second.close()
    assert delivered(db) == {"answered": 1, "cut-off": 0}
    assert sorted(p.name for p in db.path.parent.iterdir() if "usage-" in p.name) == []


KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    from imagegate import usage
    from imagegate.db import Database
    from imagegate.usage import UsageLog, UsageRecord

    usage.FLUSH_SECONDS = float(sys.argv[2])
    log = UsageLog(Database(Path(sys.argv[1])), background=True)
    for index in range(100000):
        log.record(UsageRecord(request_id=f"r{index}", key_id=None, user=None, model="m", provider="p",
                               mode="t2i", images=1, cost=0.1, input_tokens=0, output_tokens=0))
        if index % 2 == 0:
            log.mark_delivered(f"r{index}")  # the even requests' answers reached their clients
        if index % 50 == 49:
            print(index + 1, flush=True)  # this many records were accepted (and their marks)
""")


@pytest.mark.parametrize("flush_seconds", ["3600", "0.005"], ids=["never-flushed", "killed-mid-flush"])
def test_a_killed_processs_journal_is_inserted_once_by_a_running_writer(
    db: Database, monkeypatch: pytest.MonkeyPatch, flush_seconds: str
) -> None:
    monkeypatch.setattr(usage_module, "SWEEP_SECONDS", 0.05)
    running = UsageLog(db, background=True)  # a sibling worker, up before and after the kill
    accepted = kill_9_after(KILLED, [str(db.path), flush_seconds], 500)
    wait_until(
        lambda: not list(db.path.parent.glob("usage-journal.*")) and not list(db.path.parent.glob("*.replaying")),
        "the killed process's journal to be claimed",
    )
    running.close()
    rows = db.execute("SELECT request_id, delivered FROM usage")
    ids = [str(r[0]) for r in rows]
    assert len(ids) == len(set(ids))  # nothing twice
    marks = {str(r[0]): int(r[1]) for r in rows}
    for index in range(accepted):  # every accepted record, delivered exactly when it was marked
        assert marks[f"r{index}"] == (1 if index % 2 == 0 else 0), f"r{index}"
