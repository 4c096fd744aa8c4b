"""`imagegate usage --group-by day` and undelivered images; `imagegate generate` marks its row
delivered once the files are written (and not when writing them fails)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from imagegate.config import Settings
from imagegate.db import Database
from imagegate.usage import UsageLog, UsageRecord

from .fakes.gemini import FakeGemini
from .test_cli import MODEL, invoke, ok, usage_json


@pytest.fixture
def with_gemini(fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> FakeGemini:
    """The CLI's in-process gateway sees the fake Gemini through the environment."""
    monkeypatch.setenv("GEMINI_API_KEY", fake_gemini.api_key)
    monkeypatch.setenv("GEMINI_BASE_URL", fake_gemini.base_url)
    return fake_gemini


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def rows() -> list[tuple[str, int, int]]:
    db = Database(Settings().database_path)
    try:
        return [
            (str(r[0]), int(r[1]), int(r[2])) for r in db.execute("SELECT request_id, images, delivered FROM usage")
        ]
    finally:
        db.close()


def test_usage_by_day_with_undelivered_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich's table on one line per row
    db = Database(Settings().database_path)
    try:
        log = UsageLog(db)
        for request_id, when, images in (
            ("a", "2026-11-29T23:59:59.9+00:00", 1),
            ("b", "2026-11-30T00:00:00+00:00", 2),
            ("c", "2026-11-30T08:00:00+00:00", 3),
        ):
            log.record(UsageRecord(request_id, None, None, MODEL, "gemini", "t2i", images, 0.1, 0, 0), at=at(when))
        log.mark_delivered("c")
    finally:
        db.close()
    data = usage_json("--since", "2026-11-29", "--until", "2026-12-01", "--group-by", "day")
    assert data["by"] == ["day"]
    days = {t["day"]: (t["requests"], t["images"], t["undelivered_images"]) for t in data["totals"]}
    assert days == {"2026-11-29": (1, 1, 1), "2026-11-30": (2, 5, 2)}
    assert data["total"]["undelivered_images"] == 3
    table = ok("usage", "--since", "2026-11-29", "--until", "2026-12-01", "--by", "day").stdout
    assert "undelivered" in table and "2026-11-30" in table


def test_generate_marks_its_row_delivered_once_the_file_is_written(with_gemini: FakeGemini, tmp_path: Path) -> None:
    ok("generate", "a cat", "-o", str(tmp_path / "out.png"))
    assert [(images, delivered) for _, images, delivered in rows()] == [(1, 1)]
    assert rows()[0][0].startswith("cli_")


def test_generate_that_cannot_write_its_file_leaves_the_row_undelivered(
    with_gemini: FakeGemini, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output's directory should be")
    result = invoke("generate", "a cat", "-o", str(blocker / "out.png"), catch_exceptions=True)
    assert result.exit_code != 0
    assert [(images, delivered) for _, images, delivered in rows()] == [(1, 0)]
