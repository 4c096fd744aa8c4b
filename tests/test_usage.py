"""Usage rows survive a database that cannot take writes: spooled, then inserted later."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate.db import Database
from imagegate.usage import UsageLog, UsageRecord


def record(request_id: str, images: int = 1) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        key_id="key",
        user=None,
        model="m",
        provider="gemini",
        mode="generate",
        images=images,
        cost=0.134 * images,
        input_tokens=3,
        output_tokens=4,
    )


def rows(db: Database) -> list[tuple[str, int, float]]:
    return [(r[0], r[1], r[2]) for r in db.execute("SELECT request_id, images, cost FROM usage ORDER BY id")]


class FailingInserts:
    """Makes the database refuse usage inserts, as a full disk does, while `failing` is set: a
    temporary trigger on the gateway's own connection fails every INSERT INTO usage, whichever
    way it is made (one statement, or a transaction of many)."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.db = db
        self.failing = True

    @property
    def failing(self) -> bool:
        return self._failing

    @failing.setter
    def failing(self, on: bool) -> None:
        self._failing = on
        if on:
            self.db.execute(
                "CREATE TEMP TRIGGER IF NOT EXISTS usage_full BEFORE INSERT ON usage "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        else:
            self.db.execute("DROP TRIGGER IF EXISTS temp.usage_full")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "imagegate.db")
    yield database
    database.close()


def test_a_failed_insert_is_spooled_and_inserted_at_the_next_write(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    usage = UsageLog(db)
    broken = FailingInserts(db, monkeypatch)
    usage.record(record("req-1", images=2))  # does not raise
    assert rows(db) == []
    assert len(usage.spool.read_text().splitlines()) == 1
    assert any("req-1" in r.message and r.levelname == "ERROR" for r in caplog.records)
    broken.failing = False
    usage.record(record("req-2"))
    assert rows(db) == [("req-2", 1, 0.134), ("req-1", 2, 0.268)]
    assert not usage.spool.exists()
    assert list(usage.spool.parent.glob("*.replaying")) == []


def test_when_the_spool_fails_too_the_record_is_kept_in_memory(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = UsageLog(db, spool=tmp_path / "missing-dir" / "spool.jsonl")
    broken = FailingInserts(db, monkeypatch)
    usage.record(record("req-1"))
    broken.failing = False
    usage.record(record("req-2"))
    assert [r[0] for r in rows(db)] == ["req-2", "req-1"]


def test_spooled_records_are_inserted_at_start_with_their_original_time(db: Database) -> None:
    spool = db.path.with_name("usage-spool.jsonl")
    fields = {
        "request_id": "req-old",
        "key_id": None,
        "user": "u",
        "model": "m",
        "provider": "fal",
        "mode": "edit",
        "images": 3,
        "cost": 0.45,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    spool.write_text(json.dumps({"created_at": 123.0, "record": fields}) + "\n")
    UsageLog(db)
    assert db.execute("SELECT request_id, created_at, user, images FROM usage")[0][:] == ("req-old", 123.0, "u", 3)
    assert not spool.exists()


def test_a_replay_that_fails_again_keeps_the_rest_for_later(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = UsageLog(db)
    broken = FailingInserts(db, monkeypatch)
    usage.record(record("req-1"))
    usage.record(record("req-2"))
    assert usage.replay() == 0  # still failing: nothing lost, nothing inserted
    assert len(usage.spool.read_text().splitlines()) == 2
    broken.failing = False
    assert usage.replay() == 2
    assert [r[0] for r in rows(db)] == ["req-1", "req-2"]


def test_a_spool_is_replayed_as_one_transaction(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure on one row inserts none of the file (all of it stays spooled), so a later replay
    neither loses nor doubles a row."""
    usage = UsageLog(db)
    broken = FailingInserts(db, monkeypatch)
    for request_id in ("req-1", "req-2", "req-3"):
        usage.record(record(request_id))
    broken.failing = False
    db.execute(
        "CREATE TEMP TRIGGER only_req_2 BEFORE INSERT ON usage WHEN NEW.request_id = 'req-2' "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    assert usage.replay() == 0
    assert rows(db) == []
    assert len(usage.spool.read_text().splitlines()) == 3
    db.execute("DROP TRIGGER temp.only_req_2")
    assert usage.replay() == 3
    assert sorted(r[0] for r in rows(db)) == ["req-1", "req-2", "req-3"]
