"""The background usage writer (usage.py): off the request path, and never losing a record.

A record is in this process's journal or in the database at every moment: a burst all lands,
shutdown flushes, and a process killed mid-burst (kill -9) leaves a journal the next start inserts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegate import usage as usage_module
from imagegate.db import Database
from imagegate.usage import UsageLog, UsageRecord


def record(request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        key_id="k",
        user=None,
        model="m",
        provider="gemini",
        mode="t2i",
        images=1,
        cost=0.134,
        input_tokens=1,
        output_tokens=2,
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "imagegate.db")
    yield database
    database.close()


def request_ids(db: Database) -> list[str]:
    return [str(row[0]) for row in db.execute("SELECT request_id FROM usage ORDER BY id")]


def leftovers(db: Database) -> list[str]:
    return sorted(p.name for p in db.path.parent.iterdir() if "usage-" in p.name)


def test_a_burst_from_many_threads_all_lands(db: Database) -> None:
    log = UsageLog(db, background=True)
    assert log.queued

    def burst(worker: int) -> None:
        for index in range(50):
            log.record(record(f"w{worker}-{index}"))

    threads = [threading.Thread(target=burst, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert sorted(request_ids(db)) == sorted(f"w{w}-{i}" for w in range(8) for i in range(50))
    assert leftovers(db) == []


def test_recording_writes_no_row_on_the_callers_thread(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    caller = threading.get_ident()
    on_caller: list[str] = []
    execute = db.execute

    def watched(sql: str, *args: Any) -> Any:
        if threading.get_ident() == caller:
            on_caller.append(sql)
        return execute(sql, *args)

    log = UsageLog(db, background=True)
    monkeypatch.setattr(db, "execute", watched)
    for index in range(20):
        log.record(record(f"r{index}"))
    assert on_caller == []
    log.close()
    assert len(request_ids(db)) == 20


def test_shutdown_flushes_what_the_writer_had_not_written(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "FLUSH_SECONDS", 3600.0)  # the writer never wakes by itself
    log = UsageLog(db, background=True)
    for index in range(5):
        log.record(record(f"s{index}"))
    assert request_ids(db) == []  # journalled, not yet written
    assert log.journal.exists()
    log.close()
    assert request_ids(db) == [f"s{index}" for index in range(5)]
    assert leftovers(db) == []


def test_flushes_empty_the_two_journals_in_place_instead_of_making_files(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file is made or deleted per flush (on ext4 without a journal, every file made later scans
    past the inodes freed in the last minutes). An open descriptor keeps the first journal's inode
    from being reused, so a journal made anew at its path would be another file."""
    monkeypatch.setattr(usage_module, "FLUSH_SECONDS", 3600.0)  # only this test flushes
    log = UsageLog(db, background=True)
    log.record(record("f0"))
    first = os.open(log.journals[0], os.O_RDONLY)
    try:
        for index in range(1, 7):
            log.flush()
            log.record(record(f"f{index}"))
        log.flush()
        assert os.path.samestat(os.fstat(first), os.stat(log.journals[0]))
        assert [os.stat(journal).st_size for journal in log.journals] == [0, 0]
        assert request_ids(db) == [f"f{index}" for index in range(7)]
        assert leftovers(db) == sorted(journal.name for journal in log.journals)
    finally:
        os.close(first)
    log.close()
    assert leftovers(db) == []


def test_rows_in_both_journals_of_a_dead_process_are_inserted_once(db: Database) -> None:
    """A process killed after its writer's commit and before it emptied the file: the rows are in
    the table and still in the journal, and its other journal has the rest."""
    UsageLog(db).record(record("committed"), at=1.0)
    pid = "999999999"  # no such process
    db.path.with_name(f"usage-journal.{pid}.jsonl").write_text(usage_module._line(1.0, record("committed")))
    db.path.with_name(f"usage-journal.{pid}.b.jsonl").write_text(
        usage_module._line(2.0, record("later")) + usage_module._mark_line("committed")
    )
    UsageLog(db)
    assert request_ids(db) == ["committed", "later"]
    delivered = {str(r[0]): int(r[1]) for r in db.execute("SELECT request_id, delivered FROM usage")}
    assert delivered == {"committed": 1, "later": 0}
    assert leftovers(db) == []


def test_a_dead_processs_journal_is_inserted_at_the_next_start_and_a_live_ones_is_not(db: Database) -> None:
    dead = db.path.with_name("usage-journal.999999999.jsonl")  # no such pid
    dead.write_text(usage_module._line(1.0, record("from-the-dead")))
    live = db.path.with_name(f"usage-journal.{os.getppid()}.jsonl")  # our parent runs
    live.write_text(usage_module._line(2.0, record("still-running")))
    UsageLog(db)
    assert request_ids(db) == ["from-the-dead"]
    assert not dead.exists() and live.exists()
    live.unlink()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from imagegate import usage
    from imagegate.db import Database
    from imagegate.usage import UsageLog, UsageRecord

    usage.FLUSH_SECONDS = 0.005  # flushing all the time: the kill lands mid-flush as often as not
    log = UsageLog(Database(Path(sys.argv[1])), background=True)
    for index in range(100000):
        log.record(UsageRecord(request_id=f"k{index}", key_id=None, user=None, model="m", provider="p",
                               mode="t2i", images=1, cost=0.1, input_tokens=0, output_tokens=0))
        if index % 100 == 99:
            print(index + 1, flush=True)  # this many records were accepted
""")


def kill_9_after(script: str, args: list[str], at_least: int) -> int:
    """Run `script` (python -c, this interpreter's path), which prints its running count of accepted
    records; SIGKILL it once the count reaches `at_least` (or it ends), and return the last count."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=env, text=True)
    assert child.stdout is not None
    accepted = 0
    try:
        for line in child.stdout:
            accepted = int(line)
            if accepted >= at_least:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    return accepted


def test_kill_9_mid_burst_loses_no_accepted_record(db: Database) -> None:
    accepted = kill_9_after(WRITER, [str(db.path)], 1500)
    assert accepted >= 1500
    written_before = len(request_ids(db))
    UsageLog(db)  # the next start
    ids = request_ids(db)
    assert len(ids) == len(set(ids))  # nothing twice
    assert {f"k{index}" for index in range(accepted)} <= set(ids)
    assert written_before < len(ids)  # some were only in the journal when the process died
    assert leftovers(db) == []
