"""The local result store: its size budget, eviction order, and writes that never leave half a file."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate import storage
from imagegate.db import Database
from imagegate.errors import StorageFull
from imagegate.storage import LocalResultStore

KB = 1000


class Clock:
    """Stands in for the `time` module inside imagegate.storage."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(storage, "time", fake)
    return fake


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "imagegate.db")
    yield database
    database.close()


def make_store(db: Database, tmp_path: Path, *, ttl: float = 3600, max_bytes: int | None = 0) -> LocalResultStore:
    return LocalResultStore(db, tmp_path / "results", ttl, max_bytes=max_bytes)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def total_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def test_the_total_is_kept_as_results_come_and_go(db: Database, tmp_path: Path, clock: Clock) -> None:
    store = make_store(db, tmp_path, ttl=10)
    store.put(b"a" * 300, "image/png")
    store.put(b"b" * 200, "image/png")
    assert store.stored_bytes() == 500 == total_on_disk(store.directory)
    clock.now += 11
    assert store.purge_expired() == 2
    assert store.stored_bytes() == 0


def test_oldest_results_are_evicted_to_stay_within_the_budget(db: Database, tmp_path: Path, clock: Clock) -> None:
    store = make_store(db, tmp_path, max_bytes=3 * KB)
    names = []
    for _ in range(5):
        names.append(store.put(b"x" * KB, "image/webp"))
        clock.now += 1
        assert total_on_disk(store.directory) <= 3 * KB
    assert [store.get(n) is not None for n in names] == [False, False, True, True, True]
    assert store.stored_bytes() == 3 * KB


def test_expired_results_go_before_older_live_ones(db: Database, tmp_path: Path, clock: Clock) -> None:
    long_lived = make_store(db, tmp_path, ttl=1000, max_bytes=3 * KB)
    short_lived = make_store(db, tmp_path, ttl=5, max_bytes=3 * KB)
    oldest = long_lived.put(b"a" * KB, "image/png")
    clock.now += 1
    expiring = short_lived.put(b"b" * KB, "image/png")
    clock.now += 1
    newer = long_lived.put(b"c" * KB, "image/png")
    clock.now += 10  # `expiring` has expired, nothing else has
    newest = long_lived.put(b"d" * KB, "image/png")
    assert long_lived.get(expiring) is None
    assert all(long_lived.get(n) is not None for n in (oldest, newer, newest))
    assert len(files_in(long_lived.directory)) == 3


def test_a_result_larger_than_the_budget_is_storage_full(db: Database, tmp_path: Path) -> None:
    store = make_store(db, tmp_path, max_bytes=KB)
    kept = store.put(b"k" * 10, "image/png")
    with pytest.raises(StorageFull) as caught:
        store.put(b"x" * (KB + 1), "image/png")
    assert caught.value.status_code == 503 and caught.value.code == "storage_full"
    assert caught.value.headers()["retry-after"] == "30"
    assert store.get(kept) is not None  # nothing was evicted for a result that cannot fit anyway


def test_processes_sharing_the_database_share_one_budget(tmp_path: Path, clock: Clock) -> None:
    first_db, second_db = Database(tmp_path / "imagegate.db"), Database(tmp_path / "imagegate.db")
    try:
        first, second = (
            make_store(first_db, tmp_path, max_bytes=3 * KB),
            make_store(second_db, tmp_path, max_bytes=3 * KB),
        )
        for index in range(6):
            (first if index % 2 else second).put(b"x" * KB, "image/png")
            clock.now += 1
        assert total_on_disk(first.directory) == 3 * KB == first.stored_bytes() == second.stored_bytes()
    finally:
        first_db.close()
        second_db.close()


def test_a_full_disk_mid_write_is_storage_full_and_leaves_nothing(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(db, tmp_path, max_bytes=10 * KB)

    def half_then_full(fd: int, data: memoryview) -> int:
        if len(data) > 100:
            return os.write(fd, data[: len(data) // 2])  # the first half lands on disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "_write_chunk", half_then_full)
    with pytest.raises(StorageFull):
        store.put(b"x" * KB, "image/png")
    assert files_in(store.directory) == []
    assert db.execute("SELECT COUNT(*) FROM results")[0][0] == 0
    assert db.execute("SELECT COUNT(*) FROM result_reservations")[0][0] == 0
    monkeypatch.undo()
    name = store.put(b"y" * KB, "image/png")
    stored = store.get(name)
    assert stored is not None and stored.path.read_bytes() == b"y" * KB


def test_other_write_errors_are_not_reported_as_a_full_disk(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(db, tmp_path)

    def broken(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(storage, "_write_chunk", broken)
    with pytest.raises(OSError) as caught:
        store.put(b"x" * KB, "image/png")
    assert not isinstance(caught.value, StorageFull) and caught.value.errno == errno.EIO
    assert files_in(store.directory) == []


def test_a_claim_left_by_a_dead_process_expires(db: Database, tmp_path: Path, clock: Clock) -> None:
    store = make_store(db, tmp_path, max_bytes=2 * KB)
    db.execute("INSERT INTO result_reservations (id, bytes, expires_at) VALUES ('dead', ?, ?)", (2 * KB, clock.now + 1))
    with pytest.raises(StorageFull):
        store.put(b"x" * KB, "image/png")  # the whole budget is claimed by a write "in progress"
    clock.now += storage.RESERVATION_SECONDS
    assert store.get(store.put(b"x" * KB, "image/png")) is not None


def test_stale_temporary_files_are_removed_at_start(db: Database, tmp_path: Path) -> None:
    directory = tmp_path / "results"
    directory.mkdir()
    stale, fresh = directory / ".old.png.tmp", directory / ".writing.png.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * storage.RESERVATION_SECONDS
    os.utime(stale, (old, old))
    make_store(db, tmp_path)
    assert files_in(directory) == [fresh.name]  # another worker may still be writing this one


def test_the_default_budget_is_a_capped_share_of_the_free_space(tmp_path: Path, db: Database) -> None:
    store = make_store(db, tmp_path, max_bytes=None)
    stat = os.statvfs(tmp_path)
    expected = min(stat.f_bavail * stat.f_frsize // 2, storage.DEFAULT_MAX_BYTES_CAP)
    assert abs(store.max_bytes - expected) < 64 * 2**20  # other writers change the free space a little
