"""Usage and cost records, one row per served request, and their totals over a period
(`imagegate usage`).

A usage row is written once the upstream has been paid, so it must not be lost to a database
that cannot take writes for a moment (disk full, a lock held too long): such a record goes to a
JSON-lines spool file next to the database (or, when even that fails, stays in memory) and is
inserted on the next successful write, or at the next start.

The gateway writes usage off the request path (`UsageLog(..., background=True)`): `record`
appends one line to this process's journal file (one small O_APPEND write, ~10 us, safe on the
event loop) and a writer thread moves the journal into the database every FLUSH_SECONDS. A process
has two journals, `usage-journal.<pid>.jsonl` and `usage-journal.<pid>.b.jsonl`, and appends to
one while the writer inserts the other's rows and then empties it. So a record is in a journal or
the database at every moment, and a row already there is not inserted twice (request id and
time), which also covers a writer stopped between its commit and emptying the file. Two files
emptied in place, not one renamed away and made again at each flush: a file made and deleted five
times a second leaves its freed inodes behind, and on ext4 without a journal each new file
(a hosted result) then scans past all of those deleted in the last minutes (`recently_deleted`),
which was 15 % of the gateway's CPU on the url path (perf, bench/gateway_overhead.py).

`close()` flushes both and removes them; a process killed before it could (kill -9) leaves its
journals, which the running writers of the same data dir (sibling workers) claim within
SWEEP_SECONDS by renaming them, as the next start does, like a dead process's claimed spool. The
queue is those files: a database that stalls makes them grow on disk, never in memory, and never
blocks a request.

Delivered or not: a row is journaled as undelivered when the upstream calls made its images
(they are paid for), before the answer goes out. Once the answer has been written to its client
(server/delivery.py says when), `mark_delivered` appends a second small line, `{"delivered":
<request id>}`. The writer applies marks as it inserts: a row whose mark is in the same flush is
inserted with `delivered = 1` (no second statement); a mark for a row already in the table is an
UPDATE by request id. So after a kill -9 the journal holds each paid request once, marked when its
client got the answer, and a client that went away first leaves its row undelivered. A mark whose
row is not in the table yet (it is in a journal another instance will replay: an idempotent replay
or a re-run job served here of a request recorded there) is kept in `usage_marks`, which an insert
reads, so marks and rows meet in whichever order they arrive.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread

from .db import Database, DatabaseError
from .keys import STATIC_ID_PREFIX

log = logging.getLogger("imagegate")
SPOOL_NAME = "usage-spool.jsonl"
JOURNAL_PREFIX = "usage-journal."  # + pid + ".jsonl": this process's records not yet in the database
FLUSH_SECONDS = 0.2  # the background writer's period
ERROR_LOG_SECONDS = 60.0  # a writer that keeps failing says so at most this often
SWEEP_SECONDS = 5.0  # how often a running writer claims the journals of dead processes of its data dir
DAY_SECONDS = 86400


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


Grouping = Literal["key", "model", "provider", "day"]
# What each grouping reads; a fixed map, so no caller's text ever reaches the SQL. A day is the
# UTC day number, floor(created_at / 86400), in SQL that SQLite and PostgreSQL compute alike: CAST
# truncates in SQLite and rounds in PostgreSQL, so one rounded up is taken back by one (floor);
# bigint / integer is integer division in both.
_SECONDS = "CAST(u.created_at AS BIGINT)"
DAY_NUMBER = f"(CASE WHEN {_SECONDS} > u.created_at THEN {_SECONDS} - 1 ELSE {_SECONDS} END) / {DAY_SECONDS}"
GROUP_COLUMNS: dict[Grouping, str] = {
    "key": "u.key_id",
    "model": "u.model",
    "provider": "u.provider",
    "day": DAY_NUMBER,
}
STATIC_KEY_NAME = "static"  # the key_name of a key from IMAGEGATE_API_KEYS / IMAGEGATE_ADMIN_KEYS


@dataclass(frozen=True)
class UsageTotal:
    # The grouping's values: key id (None: the gateway ran open), model, provider, day ("YYYY-MM-DD", UTC).
    group: dict[Grouping, str | None]
    requests: int
    images: int
    cost: float
    undelivered_images: int = 0  # of `images`, those whose answer never reached the client
    key_name: str | None = None  # with a key grouping: the stored key's name, "static", or None


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
        # Appends go to journals[active]; the writer swaps them, then inserts and empties the other.
        self.journals = (
            self.spool.with_name(f"{JOURNAL_PREFIX}{os.getpid()}.jsonl"),
            self.spool.with_name(f"{JOURNAL_PREFIX}{os.getpid()}.b.jsonl"),
        )
        self._active = 0
        self._unwritten: list[tuple[float, UsageRecord]] = []  # neither in the database nor the spool
        self._next_sweep = 0.0  # monotonic time of the next claim of dead processes' journals
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
    def journal(self) -> Path:
        """The journal records are appended to now."""
        return self.journals[self._active]

    @property
    def queued(self) -> bool:
        """Whether `record` only appends to the journal (the background writer does the rest)."""
        return self._writer is not None

    def record(self, usage: UsageRecord, at: float | None = None) -> None:
        """Store one served request, made now (or `at`, a Unix time). Never raises for a database
        error: the record is spooled and inserted later."""
        created_at = time.time() if at is None else at
        if self._writer is not None and self._append_journal(_line(created_at, usage)):
            return
        try:
            self._insert(created_at, usage)
        except DatabaseError as exc:
            self._keep(_line(created_at, usage), exc, usage.request_id, (created_at, usage))
            return
        if self._unwritten or self.spool.exists():
            self.replay()  # the database takes writes again

    def mark_delivered(self, request_id: str) -> None:
        """The answer carrying this request's images was written to its client: its row counts
        as delivered. Cheap and safe on the event loop with the background writer (one journal
        line); a direct UPDATE otherwise. Never raises for a database error."""
        if self._writer is not None and self._append_journal(_mark_line(request_id)):
            return
        try:
            with self.db.transaction() as conn:
                self._apply_marks(conn, [request_id])
        except DatabaseError as exc:
            self._keep(_mark_line(request_id), exc, request_id, None)

    def _append_journal(self, text: str) -> bool:
        """One line onto this process's journal; False when the file cannot take it (then the
        record is written the synchronous way, database or spool)."""
        try:
            line = text.encode()
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
                self.flush(sweep=time.monotonic() >= self._next_sweep)
            except Exception:  # the writer must outlive a bad moment (EMFILE...); the journal keeps the records
                if time.monotonic() - last_error > ERROR_LOG_SECONDS:
                    log.exception("usage writer: flushing the journal failed; it is retried every %gs", FLUSH_SECONDS)
                    last_error = time.monotonic()

    def flush(self, *, sweep: bool = False) -> int:
        """Move what this process journaled into the database now; returns the rows inserted.
        Appends move to the other journal first, so this one is only read here. Costs one stat
        when there is nothing to do. `sweep`: also claim dead processes' journals (the writer does
        every SWEEP_SECONDS). What was spooled or left by others goes in first, so that this
        journal's delivered marks find their rows."""
        inserted = 0
        if sweep or self._unwritten or self.spool.exists():
            self._next_sweep = time.monotonic() + SWEEP_SECONDS
            inserted += self.replay(quiet=not sweep)
        with self._journal_lock:
            written = self.journals[self._active]
            self._active = 1 - self._active
        if _has_lines(written):
            with self._replay_lock:
                # On failure its rows went to the spool; either way the file is left empty.
                inserted += max(0, self._replay_file(written, empty_it=True))
        return inserted

    def close(self) -> None:
        """Stop the writer and flush what is left (shutdown)."""
        if self._writer is not None:
            self._stopping = True
            self._wake.set()
            self._writer.join()
            self._writer = None
        self.flush()
        self.flush()  # both journals
        with self._journal_lock:
            for journal in self.journals:
                if not _has_lines(journal):  # one a racing append filled waits for a restart
                    journal.unlink(missing_ok=True)

    def _insert(self, created_at: float, usage: UsageRecord) -> None:
        self.db.execute(_INSERT + f"VALUES ({_PLACES}, {_DELIVERED})", _values(created_at, usage))

    def _insert_once(self, conn: Any, created_at: float, usage: UsageRecord, delivered: bool) -> None:
        """A replayed row, inside `conn`'s transaction, unless that request's row at that time is
        there already (a process killed between inserting a journal's rows and deleting the file)."""
        sql = (
            _INSERT + f"SELECT {_PLACES}, {_DELIVERED} WHERE NOT EXISTS "
            "(SELECT 1 FROM usage WHERE request_id = ? AND created_at = ?)"
        )
        conn.execute(sql, (*_values(created_at, usage, delivered), usage.request_id, created_at))

    @staticmethod
    def _apply_marks(conn: Any, request_ids: Sequence[str]) -> None:
        """Mark rows already in the table as delivered; a mark that finds none is kept in
        usage_marks for the row's insert to read."""
        for request_id in request_ids:
            # RETURNING: SQLite 3.35+ and PostgreSQL; a row already marked is found too.
            found = conn.execute(
                "UPDATE usage SET delivered = 1 WHERE request_id = ? RETURNING request_id", (request_id,)
            ).fetchall()
            if not found:
                conn.execute(
                    "INSERT INTO usage_marks (request_id, marked_at) VALUES (?, ?) ON CONFLICT (request_id) DO NOTHING",
                    (request_id, time.time()),
                )

    def _keep(self, line: str, exc: Exception, request_id: str, unwritten: tuple[float, UsageRecord] | None) -> None:
        """A line the database did not take, onto the spool (or, a record, into memory)."""
        try:
            # One small O_APPEND write per record: whole lines even with several worker processes.
            fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as spool_exc:
            if unwritten is None:  # a delivered mark: the row stays counted, as undelivered
                log.error("usage: the delivered mark of request %s was lost (%s, %s)", request_id, exc, spool_exc)
                return
            self._unwritten.append(unwritten)
            log.error(
                "USAGE NOT WRITTEN for request %s: the database failed (%s) and so did the spool file %s "
                "(%s); kept in memory (%d records) until the database takes writes again",
                request_id,
                exc,
                self.spool,
                spool_exc,
                len(self._unwritten),
            )
            return
        log.error(
            "usage row for request %s not written to the database (%s); spooled to %s, to be inserted "
            "once the database takes writes again",
            request_id,
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
            pid = journal.name.removeprefix(JOURNAL_PREFIX).split(".")[0]  # <pid>.jsonl or <pid>.b.jsonl
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

    def _replay_file(self, path: Path, *, empty_it: bool = False) -> int:
        """Insert a journal or spool file's rows and apply its delivered marks, all in one
        transaction (one commit, not one per row: the background writer's commits were most of
        its syscalls), then delete it (`empty_it`: truncate it, one of this process's journals);
        returns the rows. A row whose mark is in the file is inserted as delivered. On a database
        error nothing of it is inserted and all of it goes back to the spool."""
        lines = path.read_text(errors="replace").splitlines()
        rows: list[tuple[float, UsageRecord, bool]] = []
        marks: dict[str, None] = {}  # in order, once each
        for line in lines:
            try:
                entry = json.loads(line)
                if "delivered" in entry and "record" not in entry:
                    marks[str(entry["delivered"])] = None
                else:
                    rows.append(_parse_spooled(entry))
            except (ValueError, TypeError, KeyError, AttributeError):
                log.error("skipping an unreadable usage spool line in %s: %r", path, line[:200])
        in_file = {usage.request_id for _, usage, _ in rows}
        later = [request_id for request_id in marks if request_id not in in_file]
        try:
            with self.db.transaction() as conn:
                for created_at, usage, delivered in rows:
                    self._insert_once(conn, created_at, usage, delivered or usage.request_id in marks)
                self._apply_marks(conn, later)
        except DatabaseError:
            with open(self.spool, "a") as fh:  # back to the spool, for the next try
                fh.write("".join(f"{line}\n" for line in lines))
            _remove(path, empty_it)
            return -1
        _remove(path, empty_it)
        return len(rows)

    def totals(
        self, since: float, until: float, by: Sequence[Grouping], *, key_id: str | None | Literal["any"] = "any"
    ) -> list[UsageTotal]:
        """Requests, images (and of them, undelivered ones) and cost made in [since, until) (Unix
        times), one total per distinct combination of the `by` groupings (one overall total when
        `by` is empty): by day in date order, then largest cost first. `key_id`: only that key's
        rows (None: those served without a key); "any": every key's."""
        columns = [GROUP_COLUMNS[name] for name in by]
        if "key" in by:
            columns.append("k.name")  # one name per key id: grouping by it too changes nothing
        selected = "".join(f"{c}, " for c in columns)
        joined = " LEFT JOIN api_keys k ON k.id = u.key_id" if "key" in by else ""
        where = "u.created_at >= ? AND u.created_at < ?"
        params: tuple[Any, ...] = (since, until)
        if key_id is None:
            where += " AND u.key_id IS NULL"
        elif key_id != "any":
            where, params = where + " AND u.key_id = ?", (since, until, key_id)
        grouped = f" GROUP BY {', '.join(columns)}" if columns else ""
        rows = self.db.execute(
            f"SELECT {selected}COUNT(*), COALESCE(SUM(u.images), 0), COALESCE(SUM(u.cost), 0), "
            f"COALESCE(SUM(CASE WHEN u.delivered = 0 THEN u.images ELSE 0 END), 0) "
            f"FROM usage u{joined} WHERE {where}{grouped}",
            params,
        )
        totals = [_total(by, row) for row in rows if int(row[-4]) > 0 or not by]
        return sorted(totals, key=lambda t: (t.group.get("day") or "", -t.cost, [str(v) for v in t.group.values()]))


def _total(by: Sequence[Grouping], row: Any) -> UsageTotal:
    group: dict[Grouping, str | None] = {}
    for name, value in zip(by, row[: len(by)], strict=True):
        group[name] = _day(int(value)) if name == "day" else value
    key_name: str | None = None
    if "key" in by:
        key_id, stored_name = group["key"], row[len(by)]
        key_name = stored_name if stored_name is not None else _static_name(key_id)
    return UsageTotal(
        group, int(row[-4]), int(row[-3]), float(row[-2]), undelivered_images=int(row[-1]), key_name=key_name
    )


def _day(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * DAY_SECONDS))


def _static_name(key_id: str | None) -> str | None:
    """A key that is not stored: one from the environment is "static"; no key at all, None."""
    return STATIC_KEY_NAME if key_id is not None and key_id.startswith(STATIC_ID_PREFIX) else None


_INSERT = (
    "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
    "input_tokens, output_tokens, cost_estimated, client_request_id, safety_identifier, delivered) "
)


_PLACES = ", ".join("?" * 14)  # the columns before `delivered`
# delivered: as the journal says, or marked before the row came (usage_marks).
_DELIVERED = "CASE WHEN ? = 1 OR EXISTS (SELECT 1 FROM usage_marks WHERE request_id = ?) THEN 1 ELSE 0 END"


def _values(created_at: float, usage: UsageRecord, delivered: bool = False) -> tuple[Any, ...]:
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
        int(delivered),
        usage.request_id,
    )


def _line(created_at: float, usage: UsageRecord) -> str:
    """A record's journal (and spool) line; it is not delivered yet when it is written."""
    return json.dumps({"created_at": created_at, "delivered": False, "record": dataclasses.asdict(usage)}) + "\n"


def _mark_line(request_id: str) -> str:
    """The line that says a request's answer reached its client."""
    return json.dumps({"delivered": request_id}) + "\n"


def _parse_spooled(entry: dict[str, Any]) -> tuple[float, UsageRecord, bool]:
    """A record line; one written before delivered marks existed (no "delivered") counts as delivered,
    as the table's rows of that time do."""
    known = {f.name for f in dataclasses.fields(UsageRecord)}
    record = UsageRecord(**{k: v for k, v in entry["record"].items() if k in known})
    return float(entry["created_at"]), record, bool(entry.get("delivered", True))


def _has_lines(path: Path) -> bool:
    """Whether the file exists and is not empty."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _remove(path: Path, empty_it: bool) -> None:
    if empty_it:
        os.truncate(path, 0)
    else:
        path.unlink()


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
