"""Usage and cost records, one row per served request, and their totals over a period
(`imagegate usage`).

A usage row is written once the upstream has been paid, so it must not be lost to a database
that cannot take writes for a moment (disk full, a lock held too long): such a record goes to a
JSON-lines spool file next to the database (or, when even that fails, stays in memory) and is
inserted on the next successful write, or at the next start.
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

from .db import Database

log = logging.getLogger("imagegate")
SPOOL_NAME = "usage-spool.jsonl"


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


class UsageLog:
    def __init__(self, db: Database, spool: Path | None = None) -> None:
        self.db = db
        self.spool = spool or db.path.with_name(SPOOL_NAME)
        self._unwritten: list[tuple[float, UsageRecord]] = []  # neither in the database nor the spool
        self._replay_lock = threading.Lock()
        self.replay()  # what an earlier run could not write

    def record(self, usage: UsageRecord, at: float | None = None) -> None:
        """Store one served request, made now (or `at`, a Unix time). Never raises for a database
        error: the record is spooled and inserted later."""
        created_at = time.time() if at is None else at
        try:
            self._insert(created_at, usage)
        except sqlite3.Error as exc:
            self._keep(created_at, usage, exc)
            return
        if self._unwritten or self.spool.exists():
            self.replay()  # the database takes writes again

    def _insert(self, created_at: float, usage: UsageRecord) -> None:
        self.db.execute(
            "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
            "input_tokens, output_tokens, cost_estimated, client_request_id, safety_identifier) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (usage.request_id, created_at, usage.key_id, usage.user, usage.model, usage.provider, usage.mode,
             usage.images, usage.cost, usage.input_tokens, usage.output_tokens, int(usage.cost_estimated),
             usage.client_request_id, usage.safety_identifier),
        )

    def _keep(self, created_at: float, usage: UsageRecord, exc: Exception) -> None:
        line = json.dumps({"created_at": created_at, "record": dataclasses.asdict(usage)}) + "\n"
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
            log.error("USAGE NOT WRITTEN for request %s: the database failed (%s) and so did the spool file %s "
                      "(%s); kept in memory (%d records) until the database takes writes again",
                      usage.request_id, exc, self.spool, spool_exc, len(self._unwritten))
            return
        log.error("usage row for request %s not written to the database (%s); spooled to %s, to be inserted "
                  "once the database takes writes again", usage.request_id, exc, self.spool)

    def replay(self) -> int:
        """Insert what was kept in memory or spooled; returns how many rows were inserted. Stops at
        the first failing insert, keeping the rest for later."""
        with self._replay_lock:
            inserted = self._replay_memory()
            if inserted < 0:
                return 0
            for path in self._claim_spools():
                done = self._replay_file(path)
                if done < 0:
                    return inserted
                inserted += done
        if inserted:
            log.warning("inserted %d usage rows that an earlier database failure had spooled", inserted)
        return inserted

    def _replay_memory(self) -> int:
        kept, self._unwritten = self._unwritten, []
        for index, (created_at, usage) in enumerate(kept):
            try:
                self._insert(created_at, usage)
            except sqlite3.Error:
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
        mine = sorted(self.spool.parent.glob(f"{self.spool.name}.{os.getpid()}.*.replaying"))
        orphans = [p for p in self.spool.parent.glob(f"{self.spool.name}.*.replaying")
                   if p not in mine and not _process_alive(p)]
        return [*orphans, *mine]

    def _replay_file(self, path: Path) -> int:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            try:
                created_at, usage = _parse_spooled(line)
            except (ValueError, TypeError, KeyError):
                log.error("skipping an unreadable usage spool line in %s: %r", path, line[:200])
                continue
            try:
                self._insert(created_at, usage)
            except sqlite3.Error:
                rest = "".join(f"{rest_line}\n" for rest_line in lines[index:])
                with open(self.spool, "a") as fh:  # back to the spool, for the next try
                    fh.write(rest)
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


def _parse_spooled(line: str) -> tuple[float, UsageRecord]:
    entry: dict[str, Any] = json.loads(line)
    known = {f.name for f in dataclasses.fields(UsageRecord)}
    return float(entry["created_at"]), UsageRecord(**{k: v for k, v in entry["record"].items() if k in known})


def _process_alive(claimed: Path) -> bool:
    """Whether the process that claimed this spool file (its pid is in the name) still runs."""
    try:
        pid = int(claimed.name.split(".")[-3])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
