"""Usage and cost records, one row per served request, and their totals over a period
(`imagegate usage`).

A usage row is written once the upstream has been paid, so it must not be lost to a database
that cannot take writes for a moment (disk full, a lock held too long): such a record goes to a
JSON-lines spool file next to the database (or, when even that fails, stays in memory) and is
inserted on the next successful write, or at the next start.

The gateway writes usage off the request path (`UsageLog(..., background=True)`): `record`
appends one line to this process's journal file (`usage-journal.<pid>.jsonl`, one small O_APPEND
write, ~10 us, safe on the event loop) and a writer thread moves the journal into the database
every FLUSH_SECONDS. So a record is in the journal or the database
at every moment: the writer claims the journal by renaming it (as the spool is claimed) and
deletes the claimed file only after its rows are in; a row already there is not inserted twice
(request id and time). `close()` flushes; a process killed before it could (kill -9) leaves
its journal, which the next start inserts, as it does a dead process's claimed spool. The queue
is that file: a database that stalls makes it grow on disk, never in memory, and never blocks a
request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread

from .db import Database, DatabaseError

log = logging.getLogger("imagegate")
SPOOL_NAME = "usage-spool.jsonl"
JOURNAL_PREFIX = "usage-journal."  # + pid + ".jsonl": this process's records not yet in the database
FLUSH_SECONDS = 0.2  # the background writer's period
ERROR_LOG_SECONDS = 60.0  # a writer that keeps failing says so at most this often


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    key_id: str | None
    user: str | None
    model: str
    provider: str
    mode: str
    images: int
    cost: float
    input_tokens: int
    output_tokens: int
    cost_estimated: bool = False  # the provider's real price is not known (catalog `estimated`)
    client_request_id: str | None = None  # the client's x-request-id; request_id is the gateway's
    safety_identifier: str | None = None  # OpenAI's end-user safety id; like `user`, never sent upstream


Grouping = Literal["key", "model", "provider"]
# What each grouping reads; a fixed map, so no caller's text ever reaches the SQL.
GROUP_COLUMNS: dict[Grouping, str] = {"key": "key_id", "model": "model", "provider": "provider"}


@dataclass(frozen=True)
class UsageTotal:
    group: dict[Grouping, str | None]  # the grouping's values (key None: the gateway ran open)
    requests: int
    images: int
    cost: float


class UsageSink(Protocol):
    def record(self, usage: UsageRecord) -> None: ...


def record_after_failure(sink: UsageSink, usage: UsageRecord) -> None:
    """Record the usage of a request that is failing anyway, on the spot (no await: the request
    may be cancelled), without letting a second error hide the first."""
    try:
        sink.record(usage)
    except Exception:
        log.exception("USAGE LOST for request %s: %s", usage.request_id, usage)


async def record_usage(sink: UsageSink, usage: UsageRecord) -> None:
    """Record on the event loop when the sink only appends to its journal, in a worker thread when
    it writes the database itself."""
    if getattr(sink, "queued", False):
        sink.record(usage)
    else:
        await anyio.to_thread.run_sync(sink.record, usage)


class UsageLog:
    def __init__(self, db: Database, spool: Path | None = None, *, background: bool = False) -> None:
        self.db = db
        self.spool = spool or db.path.with_name(SPOOL_NAME)
        self.journal = self.spool.with_name(f"{JOURNAL_PREFIX}{os.getpid()}.jsonl")
        self._unwritten: list[tuple[float, UsageRecord]] = []  # neither in the database nor the spool
        self._replay_lock = threading.Lock()
        self._journal_lock = threading.Lock()  # an append never lands in a journal being claimed
        self._wake = threading.Event()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self.replay()  # what an earlier run could not write
        if background:
            self._writer = threading.Thread(target=self._write_loop, name="imagegate-usage-writer", daemon=True)
            self._writer.start()

    @property
    def queued(self) -> bool:
        """Whether `record` only appends to the journal (the background writer does the rest)."""
        return self._writer is not None

    def record(self, usage: UsageRecord, at: float | None = None) -> None:
        """Store one served request, made now (or `at`, a Unix time). Never raises for a database
        error: the record is spooled and inserted later."""
        created_at = time.time() if at is None else at
        if self._writer is not None and self._append_journal(created_at, usage):
            return
        try:
            self._insert(created_at, usage)
        except DatabaseError as exc:
            self._keep(created_at, usage, exc)
            return
        if self._unwritten or self.spool.exists():
            self.replay()  # the database takes writes again

    def _append_journal(self, created_at: float, usage: UsageRecord) -> bool:
        """One line onto this process's journal; False when the file cannot take it (then the
        record is written the synchronous way, database or spool)."""
        try:
            line = _line(created_at, usage).encode()
            with self._journal_lock:
                fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    written = os.write(fd, line)
                finally:
                    os.close(fd)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("usage journal %s not writable (%s): writing usage directly", self.journal, exc)
            return False
        if written != len(line):  # a short write (disk full): the line is broken, replay skips it
            return False
        return True

    def _write_loop(self) -> None:
        last_error = 0.0
        while not self._stopping:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must outlive a bad moment (EMFILE...); the journal keeps the records
                if time.monotonic() - last_error > ERROR_LOG_SECONDS:
                    log.exception("usage writer: flushing the journal failed; it is retried every %gs", FLUSH_SECONDS)
                    last_error = time.monotonic()

    def flush(self) -> int:
        """Move this process's journal into the database now; returns the rows inserted. Costs one
        failed rename when there is nothing to do."""
        target = self.spool.with_name(f"{self.spool.name}.{os.getpid()}.{secrets.token_hex(4)}.replaying")
        claimed: Path | None = None
        with self._journal_lock:
            try:
                os.rename(self.journal, target)
                claimed = target
            except FileNotFoundError:
                pass
        inserted = 0
        if claimed is not None:
            with self._replay_lock:
                inserted = max(0, self._replay_file(claimed))  # on failure its rows went to the spool
        if self._unwritten or self.spool.exists():
            inserted += self.replay(quiet=True)
        return inserted

    def close(self) -> None:
        """Stop the writer and flush what is left (shutdown)."""
        if self._writer is not None:
            self._stopping = True
            self._wake.set()
            self._writer.join()
            self._writer = None
        self.flush()

    def _insert(self, created_at: float, usage: UsageRecord) -> None:
        self.db.execute(_INSERT + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(created_at, usage))

    def _insert_once(self, created_at: float, usage: UsageRecord, conn: sqlite3.Connection | None = None) -> None:
        """A replayed row, unless that request's row at that time is there already (a process killed
        between inserting a journal's rows and deleting the file); inside `conn`'s transaction
        when given."""
        sql = (
            _INSERT + "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
            "(SELECT 1 FROM usage WHERE request_id = ? AND created_at = ?)"
        )
        params = (*_values(created_at, usage), usage.request_id, created_at)
        if conn is None:
            self.db.execute(sql, params)
        else:
            conn.execute(sql, params)

    def _keep(self, created_at: float, usage: UsageRecord, exc: Exception) -> None:
        line = _line(created_at, usage)
        try:
            # One small O_APPEND write per record: whole lines even with several worker processes.
            fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as spool_exc:
            self._unwritten.append((created_at, usage))
            log.error(
                "USAGE NOT WRITTEN for request %s: the database failed (%s) and so did the spool file %s "
                "(%s); kept in memory (%d records) until the database takes writes again",
                usage.request_id,
                exc,
                self.spool,
                spool_exc,
                len(self._unwritten),
            )
            return
        log.error(
            "usage row for request %s not written to the database (%s); spooled to %s, to be inserted "
            "once the database takes writes again",
            usage.request_id,
            exc,
            self.spool,
        )

    def replay(self, *, quiet: bool = False) -> int:
        """Insert what was kept in memory or spooled (and dead processes' journals); returns how
        many rows were inserted. Stops at the first failing file, keeping the rest for later."""
        with self._replay_lock:
            inserted = self._replay_memory()
            if inserted < 0:
                return 0
            for path in self._claim_spools():
                done = self._replay_file(path)
                if done < 0:
                    return inserted
                inserted += done
        if inserted and not quiet:
            log.warning("inserted %d usage rows that an earlier database failure (or run) had spooled", inserted)
        return inserted

    def _replay_memory(self) -> int:
        kept, self._unwritten = self._unwritten, []
        for index, (created_at, usage) in enumerate(kept):
            try:
                self._insert(created_at, usage)
            except DatabaseError:
                self._unwritten[:0] = kept[index:]
                return -1
        return len(kept)

    def _claim_spools(self) -> list[Path]:
        """Rename the spool so that exactly one process replays it (rename is atomic), plus any
        claimed file a crashed process left."""
        claimed = f"{self.spool.name}.{os.getpid()}.{secrets.token_hex(4)}.replaying"
        try:
            os.rename(self.spool, self.spool.with_name(claimed))
        except FileNotFoundError:
            pass
        for journal in self.spool.parent.glob(f"{JOURNAL_PREFIX}*.jsonl"):  # a dead process's, never flushed
            pid = journal.name.removeprefix(JOURNAL_PREFIX).removesuffix(".jsonl")
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                try:
                    os.rename(
                        journal, self.spool.with_name(f"{self.spool.name}.{pid}.{secrets.token_hex(4)}.replaying")
                    )
                except FileNotFoundError:
                    pass
        mine = sorted(self.spool.parent.glob(f"{self.spool.name}.{os.getpid()}.*.replaying"))
        orphans = [
            p
            for p in self.spool.parent.glob(f"{self.spool.name}.*.replaying")
            if p not in mine and not _process_alive(p)
        ]
        return [*orphans, *mine]

    def _replay_file(self, path: Path) -> int:
        """Insert a journal or spool file's rows, all in one transaction (one commit, not one per
        row: the background writer's commits were most of its syscalls), then delete it. On a
        database error nothing of it is inserted and all of it goes back to the spool."""
        lines = path.read_text(errors="replace").splitlines()
        rows: list[tuple[float, UsageRecord]] = []
        for line in lines:
            try:
                rows.append(_parse_spooled(line))
            except (ValueError, TypeError, KeyError, AttributeError):
                log.error("skipping an unreadable usage spool line in %s: %r", path, line[:200])
        try:
            with self.db.transaction() as conn:
                for created_at, usage in rows:
                    self._insert_once(created_at, usage, conn)
        except DatabaseError:
            with open(self.spool, "a") as fh:  # back to the spool, for the next try
                fh.write("".join(f"{line}\n" for line in lines))
            path.unlink()
            return -1
        path.unlink()
        return len(lines)

    def totals(self, since: float, until: float, by: Sequence[Grouping]) -> list[UsageTotal]:
        """Requests, images and cost made in [since, until) (Unix times), one total per distinct
        combination of the `by` columns (one overall total when `by` is empty), largest cost first."""
        columns = [GROUP_COLUMNS[name] for name in by]
        selected = "".join(f"{c}, " for c in columns)
        grouped = f" GROUP BY {', '.join(columns)}" if columns else ""
        rows = self.db.execute(
            f"SELECT {selected}COUNT(*), COALESCE(SUM(images), 0), COALESCE(SUM(cost), 0) FROM usage "
            f"WHERE created_at >= ? AND created_at < ?{grouped}",
            (since, until),
        )
        totals = [
            UsageTotal(dict(zip(by, row[: len(by)], strict=True)), int(row[-3]), int(row[-2]), float(row[-1]))
            for row in rows
            if int(row[-3]) > 0 or not by
        ]
        return sorted(totals, key=lambda t: (-t.cost, [str(v) for v in t.group.values()]))


_INSERT = (
    "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
    "input_tokens, output_tokens, cost_estimated, client_request_id, safety_identifier) "
)


def _values(created_at: float, usage: UsageRecord) -> tuple[Any, ...]:
    return (
        usage.request_id,
        created_at,
        usage.key_id,
        usage.user,
        usage.model,
        usage.provider,
        usage.mode,
        usage.images,
        usage.cost,
        usage.input_tokens,
        usage.output_tokens,
        int(usage.cost_estimated),
        usage.client_request_id,
        usage.safety_identifier,
    )


def _line(created_at: float, usage: UsageRecord) -> str:
    return json.dumps({"created_at": created_at, "record": dataclasses.asdict(usage)}) + "\n"


def _parse_spooled(line: str) -> tuple[float, UsageRecord]:
    entry: dict[str, Any] = json.loads(line)
    known = {f.name for f in dataclasses.fields(UsageRecord)}
    return float(entry["created_at"]), UsageRecord(**{k: v for k, v in entry["record"].items() if k in known})


def _process_alive(claimed: Path) -> bool:
    """Whether the process that claimed this spool file (its pid is in the name) still runs."""
    try:
        pid = int(claimed.name.split(".")[-3])
    except (ValueError, IndexError):
        return False
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
