"""The usage ledger's delivered marks and totals on a real PostgreSQL server (tests/backends.py):
the same SQL as on SQLite, and the same answers, at day boundaries included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from imagegate import db as dbm
from imagegate import usage as usage_module
from imagegate.keys import KeyStore
from imagegate.usage import UsageLog, UsageRecord


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dbm.Database]:
    path = tmp_path / "data" / "imagegate.db"
    if request.param == "sqlite":
        opened = dbm.Database(path)
    else:
        url: str = request.getfixturevalue("postgres_url")
        dbm.migrate(url)
        opened = dbm.PostgresDatabase(url, path)
    yield opened
    opened.close()


def record(request_id: str, images: int = 1, key_id: str | None = None, provider: str = "gemini") -> UsageRecord:
    return UsageRecord(request_id, key_id, None, "m", provider, "t2i", images, 0.1 * images, 0, 0)


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_marks_before_in_and_after_the_rows_flush(database: dbm.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "FLUSH_SECONDS", 3600.0)
    log = UsageLog(database, background=True)
    log.mark_delivered("early")  # before its row: kept in usage_marks
    log.flush()
    log.record(record("early"))
    log.record(record("now"))
    log.record(record("later"))
    log.record(record("never"))
    log.mark_delivered("now")
    log.flush()
    log.mark_delivered("later")
    log.close()
    rows = {str(r[0]): int(r[1]) for r in database.execute("SELECT request_id, delivered FROM usage")}
    assert rows == {"early": 1, "now": 1, "later": 1, "never": 0}


def test_totals_by_day_key_and_provider(database: dbm.Database) -> None:
    """A quarter second before midnight stays in its day (PostgreSQL's CAST rounds, SQLite's
    truncates: the day number is a floor in both); stored keys are named, static ones "static"."""
    key, _ = KeyStore(database).create("alice")
    log = UsageLog(database)
    log.record(record("a", 1, key.id), at=at("2026-11-29T23:59:59.75+00:00"))
    log.record(record("b", 2, key.id), at=at("2026-11-30T00:00:00+00:00"))
    log.record(record("c", 3, "static-0123456789ab", "fal"), at=at("2026-11-30T23:59:59.5+00:00"))
    log.record(record("d", 4, None), at=at("2026-11-30T12:00:00+00:00"))
    log.mark_delivered("b")
    since, until = at("2026-11-29T00:00:00+00:00"), at("2026-12-01T00:00:00+00:00")
    by_day = {t.group["day"]: (t.requests, t.images, t.undelivered_images) for t in log.totals(since, until, ["day"])}
    assert by_day == {"2026-11-29": (1, 1, 1), "2026-11-30": (3, 9, 7)}
    by_key = {(t.group["key"], t.key_name): t.images for t in log.totals(since, until, ["key"])}
    assert by_key == {(key.id, "alice"): 3, ("static-0123456789ab", "static"): 3, (None, None): 4}
    mine = log.totals(since, until, ["day", "provider"], key_id=key.id)
    assert [(t.group["day"], t.group["provider"], t.images) for t in mine] == [
        ("2026-11-29", "gemini", 1),
        ("2026-11-30", "gemini", 2),
    ]
    assert [t.images for t in log.totals(since, until, [], key_id=None)] == [4]  # rows served without a key
