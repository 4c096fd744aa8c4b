"""Async jobs: an images request accepted now (`Prefer: respond-async`, a 202) and run later.

A job is a row of the `jobs` table (db.py) holding everything needed to run the request later:
its fields as JSON, the request ids and base URLs its answer needs; its uploaded images and mask
are rows of `job_inputs`, committed with it (image URLs stay URLs and are fetched when it runs).
Everything is in the database, so any instance sharing it (IMAGEGATE_DATABASE_URL) reads, runs,
cancels and follows any job the moment its row is committed. Once committed the job is never
lost: it runs on this process or, if the process dies, on another or on the next start. (Jobs of
an older version kept their uploads as files under `<data dir>/jobs/<id>/inputs`; those are still
read, by an instance on that data dir.)

    queued -> in_progress -> succeeded | failed | cancelled        (cancelled also from queued)

`JobRunner` (one per process, started with the server's lifespan) claims queued jobs in one
transaction that counts what runs in the database, so IMAGEGATE_JOB_CONCURRENCY (global) and
IMAGEGATE_JOB_CONCURRENCY_PER_KEY hold over every worker process sharing the database. Each run
goes through `ImageService.create` like any request; its `result` is exactly the images answer
the synchronous call gives (server/render.py), its `error` OpenAI's error object.

Wake-ups (jobsignals.py): a submit wakes every instance's runner, and each event or status of a
job wakes its followers everywhere, through Redis pub/sub with IMAGEGATE_REDIS_URL; without it
runners poll the database every POLL_SECONDS and followers every jobsignals.FOLLOW_POLL_SECONDS.

Crashes: a claimed job carries its owner (`host:pid:runner`), and the owner's runner renews the
job's `heartbeat_at` every poll. On start (and every poll) a runner takes back jobs whose owner is
dead (on this host: its pid is gone; otherwise: no heartbeat for
IMAGEGATE_JOB_HEARTBEAT_STALE_SECONDS): one that started fewer than MAX_ATTEMPTS times is queued
again (its `attempts` shows the re-run), else it fails with `job_interrupted`. Usage is recorded
by the pipeline; a job whose pipeline had recorded it (`usage_counted`, set as that stage ends)
does not record it again when it is re-run, on whichever instance, so a job is counted once for
the images it delivers. Its row counts as delivered once its result is stored (the client can
fetch it from then on).

Events: every event the job's stream carries (partial images, one completed event per image, an
`error` on failure), rendered as server/streaming.py renders them, is a row of `job_events`
(at most `partial_images` + n + 1 per run; only the job's owner, while it runs it, adds any), so
that `GET /images/jobs/{id}/events` replays them from the start and then follows the live ones;
they are deleted with the job's results, a result TTL after its end. A cancelled job's stream
just ends.

Hosted results live the result TTL counted from the job's end (not from when they were written).
The Gateway's `on_finished(job)` is called once when a job reaches a final status (webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from . import jsonio
from .catalog import Mode
from .config import Settings
from .db import Database, DatabaseError
from .errors import ImagegateError, JobConflict, JobQueueFull
from .idempotency import result_names
from .imaging import MIME_BY_FORMAT, sniff_format
from .jobsignals import JobSignals
from .pipeline import ImageJob, ImagesOutcome, PipelineEvent
from .service import ImageService, ImageSource
from .storage import ResultStore
from .usage import UsageRecord, UsageSink

log = logging.getLogger("imagegate")

Status = Literal["queued", "in_progress", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("queued", "in_progress", "succeeded", "failed", "cancelled")
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
MAX_ATTEMPTS = 2  # the first run and one more after a crash
POLL_SECONDS = 1.0  # how often a runner looks for work other processes queued or cancelled
QUEUE_FULL_RETRY_SECONDS = 10.0
LEGACY_EVENT_SUFFIX = ".sse"  # an older version's event files

# Rendered events: what the job's stream sends, as bytes (server/streaming.py renders them).
PartialRenderer = Callable[[str, int, Any], bytes]
CompletedRenderer = Callable[[str, ImagesOutcome], list[bytes]]
ErrorRenderer = Callable[[ImagegateError], bytes]
ResultRenderer = Callable[[ImagesOutcome], bytes]


@dataclass
class Job:
    id: str
    status: str
    model: str
    mode: Mode
    key_id: str | None
    created_at: float
    request: dict[str, Any]  # params, inputs, mask, image_param, request ids, base URLs
    webhook_url: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    owner: str | None = None
    usage_counted: bool = False
    result: bytes | None = None  # the images answer, JSON as the synchronous call sends it
    error: dict[str, Any] | None = None  # OpenAI's error object
    # Not stored here: the webhook delivery's state (webhooks.WebhookSender.delivery_status), set
    # by whoever renders the job for the API.
    webhook: dict[str, Any] | None = None

    @property
    def request_id(self) -> str:
        return str(self.request.get("request_id") or self.id)

    @property
    def event_prefix(self) -> str:
        return "image_edit" if self.mode == "edit" else "image_generation"

    def _fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "image.job",
            "status": self.status,
            "created_at": _seconds(self.created_at),
            "started_at": _seconds(self.started_at),
            "finished_at": _seconds(self.finished_at),
            "model": self.model,
            "attempts": self.attempts,
            **({"webhook": self.webhook_state()} if self.webhook_url else {}),
        }

    def webhook_state(self) -> dict[str, Any]:
        """`webhook` in the job object: the delivery's attempts and last outcome, none yet until
        the job has ended."""
        pending = {"url": self.webhook_url, "attempts": 0, "last_status": None, "last_error": None}
        return self.webhook or {**pending, "delivered_at": None}

    def to_object(self) -> dict[str, Any]:
        """The job object as a dict (`result` parsed): what a webhook carries as its `data`."""
        result = jsonio.loads(self.result) if self.result is not None else None
        return {**self._fields(), "result": result, "error": self.error}

    def to_json(self) -> bytes:
        """The job object as the API sends it; the result (megabytes of base64, maybe) is spliced
        in as stored, not parsed and encoded again."""
        head = jsonio.dumps({**self._fields(), "error": self.error})
        return head[:-1] + b',"result":' + (self.result if self.result is not None else b"null") + b"}"


def list_json(jobs: list[Job], has_more: bool) -> bytes:
    """`{"object": "list", "data": [...], "has_more": ...}` without re-encoding any result."""
    data = b",".join(job.to_json() for job in jobs)
    return b'{"object":"list","data":[' + data + b'],"has_more":' + (b"true" if has_more else b"false") + b"}"


def _seconds(at: float | None) -> int | None:
    return None if at is None else int(at)


def new_job_id() -> str:
    return f"job_{secrets.token_hex(16)}"


# --- Prefer: respond-async (RFC 7240) -------------------------------------------------------


def prefers_async(values: Iterable[str]) -> bool:
    """Whether any Prefer header asks for `respond-async`. RFC 7240 section 2: a header holds
    comma-separated preferences, each `token [= value] *(; parameter)`, with optional whitespace;
    preference names are case-insensitive, and several Prefer headers add up."""
    for value in values:
        for preference in _split_outside_quotes(value, ","):
            name = _split_outside_quotes(preference, ";")[0].partition("=")[0].strip().lower()
            if name == "respond-async":
                return True
    return False


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split on `separator` except inside a quoted-string (which may hold commas and `\\"`)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


# --- the store -------------------------------------------------------------------------------

_COLUMNS = (
    "id, status, model, mode, key_id, created_at, request, webhook_url, started_at, finished_at, attempts, "
    "owner, usage_counted, result, error"
)


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    (id_, status, model, mode, key_id, created, request, webhook, started, finished, attempts, owner, counted) = row[
        :13
    ]
    result, error = row[13], row[14]
    return Job(
        id=id_,
        status=status,
        model=model,
        mode=cast(Mode, mode),
        key_id=key_id,
        created_at=created,
        request=jsonio.loads(request),
        webhook_url=webhook,
        started_at=started,
        finished_at=finished,
        attempts=attempts,
        owner=owner,
        usage_counted=bool(counted),
        result=result.encode() if isinstance(result, str) else result,  # stored as a BLOB
        error=jsonio.loads(error) if error else None,
    )


class JobStore:
    """The jobs table and each job's kept inputs and events (`job_inputs`, `job_events`), all in
    the database every instance shares. `legacy_directory` is where an older version kept inputs
    and events as files (`<data dir>/jobs`): still read, and deleted like the rows. Blocking: call
    it from a worker thread in async code."""

    def __init__(self, db: Database, legacy_directory: Path | None = None) -> None:
        self.db = db
        self.legacy_directory = legacy_directory

    # -- creating and reading --

    def add(
        self,
        *,
        job_id: str,
        mode: Mode,
        model: str,
        key_id: str | None,
        request: dict[str, Any],
        images: list[ImageSource],
        mask: ImageSource | None,
        webhook_url: str | None,
        max_queued: int,
    ) -> Job:
        """Keep the request, its uploads with it in one transaction: queued from the commit on. A
        full queue is JobQueueFull, with nothing left behind."""
        uploads: list[tuple[str, bytes]] = []

        def keep(name: str, source: ImageSource) -> dict[str, str]:
            if isinstance(source, str):
                return {"url": source}
            uploads.append((name, source))
            return {"input": name}

        request = {
            **request,
            "images": [keep(f"image-{i}", src) for i, src in enumerate(images)],
            "mask": None if mask is None else keep("mask", mask),
        }
        now = time.time()
        with self.db.transaction() as conn:
            (queued,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
            if queued >= max_queued:
                raise JobQueueFull(
                    f"{queued} jobs are already waiting (IMAGEGATE_JOB_QUEUE_MAX). Try again later.",
                    retry_after=QUEUE_FULL_RETRY_SECONDS,
                )
            conn.execute(
                "INSERT INTO jobs (id, key_id, status, model, mode, request, webhook_url, created_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, key_id, model, mode, jsonio.dumps(request).decode(), webhook_url, now),
            )
            for name, data in uploads:
                conn.execute(
                    "INSERT INTO job_inputs (job_id, name, content_type, data) VALUES (?, ?, ?, ?)",
                    (job_id, name, MIME_BY_FORMAT.get(sniff_format(data) or ""), data),  # None: not an image we know
                )
        job = self.get(job_id)
        assert job is not None
        return job

    def read_inputs(self, job: Job) -> tuple[list[ImageSource], ImageSource | None]:
        """The job's images and mask: URLs as sent, uploads from `job_inputs` (or, for a job of an
        older version, from its files)."""
        refs = [*(job.request.get("images") or []), *([job.request["mask"]] if job.request.get("mask") else [])]
        stored: dict[str, bytes] = {}
        if any("input" in ref for ref in refs):
            rows = self.db.execute("SELECT name, data FROM job_inputs WHERE job_id = ?", (job.id,))
            stored = {name: bytes(data) for name, data in rows}

        def read(ref: dict[str, str]) -> ImageSource:
            if "url" in ref:
                return ref["url"]
            if "input" in ref and ref["input"] in stored:
                return stored[ref["input"]]
            if "file" in ref and self.legacy_directory is not None:
                with contextlib.suppress(FileNotFoundError):
                    return (self.legacy_directory / job.id / "inputs" / ref["file"]).read_bytes()
            raise ImagegateError(f"The job's upload {ref.get('input') or ref.get('file')!r} is no longer kept.")

        images = [read(ref) for ref in job.request.get("images") or []]
        mask = job.request.get("mask")
        return images, (read(mask) if mask else None)

    def remove_inputs(self, job_id: str) -> None:
        self.db.execute("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))
        self._remove_legacy(job_id, "inputs")

    def get(self, job_id: str) -> Job | None:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def status(self, job_id: str) -> str | None:
        """Only the job's status (what a follower polls: not the result it may hold)."""
        rows = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0][0]) if rows else None

    def queued_count(self) -> int:
        """Jobs waiting to run, every process's (the queue depth /metrics reports)."""
        ((count,),) = self.db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
        return int(count)

    def page(
        self, key_id: str | None, *, limit: int, after: str | None = None, status: str | None = None
    ) -> tuple[list[Job], bool] | None:
        """The caller's jobs (key None: every job, open mode), newest first, after the job `after`
        (None when that job is not the caller's); one more is read to tell `has_more`."""
        where, args = ["1 = 1"], []
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if after is not None:
            mine, mine_args = ("id = ? AND key_id = ?", (after, key_id)) if key_id is not None else ("id = ?", (after,))
            rows = self.db.execute(f"SELECT seq FROM jobs WHERE {mine}", mine_args)
            if not rows:
                return None
            where.append("seq < ?")
            args.append(rows[0][0])
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?", (*args, limit + 1)
        )
        return [_job(row) for row in rows[:limit]], len(rows) > limit

    # -- running --

    def claim(self, owner: str, concurrency: int, per_key: int) -> Job | None:
        """The oldest queued job whose key is below its limit, marked in_progress for `owner`
        (one transaction over every process), or None when the limits or the queue say no."""
        # An empty queue is the common answer: read it without the write lock every instance shares.
        if not self.db.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1"):
            return None
        now = time.time()
        with self.db.transaction() as conn:
            (running,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'in_progress'").fetchone()
            if running >= concurrency:
                return None
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND COALESCE(key_id, '') NOT IN ("
                "  SELECT COALESCE(key_id, '') FROM jobs WHERE status = 'in_progress'"
                "  GROUP BY COALESCE(key_id, '') HAVING COUNT(*) >= ?"
                ") ORDER BY seq LIMIT 1",
                (per_key,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'in_progress', owner = ?, attempts = attempts + 1, started_at = ?, "
                "heartbeat_at = ? WHERE id = ?",
                (owner, now, now, row[0]),
            )
        return self.get(row[0])

    def mark_usage_counted(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET usage_counted = 1 WHERE id = ?", (job_id,))

    def finish(
        self,
        job_id: str,
        owner: str,
        status: Status,
        *,
        finished_at: float,
        result: bytes | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """End a job this owner runs; False if it is no longer its to end (cancelled meanwhile)."""
        rows = self.db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, owner = NULL "
            "WHERE id = ? AND status = 'in_progress' AND owner = ? RETURNING id",
            (
                status,
                finished_at,
                result,
                None if error is None else jsonio.dumps(error).decode(),
                job_id,
                owner,
            ),
        )
        return bool(rows)

    def requeue(self, job_id: str, owner: str) -> None:
        """A run stopped by a graceful shutdown: queued again, and that start does not count."""
        self.db.execute(
            "UPDATE jobs SET status = 'queued', owner = NULL, started_at = NULL, "
            "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
            "WHERE id = ? AND status = 'in_progress' AND owner = ?",
            (job_id, owner),
        )

    def cancel(self, job_id: str) -> tuple[str, Job]:
        """Cancel a queued or running job; returns (its status before, the job now). A finished
        one is JobConflict."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            assert row is not None
            before = row[0]
            if before in FINAL:
                raise JobConflict(f"Job {job_id} has already finished ({before}); it cannot be cancelled.")
            conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (time.time(), job_id))
        job = self.get(job_id)
        assert job is not None
        return before, job

    def cancelled_among(self, job_ids: Iterable[str]) -> list[str]:
        ids = list(job_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id FROM jobs WHERE status = 'cancelled' AND id IN ({marks})", tuple(ids))
        return [row[0] for row in rows]

    def heartbeat(self, owner: str, job_ids: Iterable[str]) -> None:
        """The owner still runs these jobs."""
        ids = list(job_ids)
        if ids:
            marks = ",".join("?" * len(ids))
            self.db.execute(
                f"UPDATE jobs SET heartbeat_at = ? WHERE owner = ? AND status = 'in_progress' AND id IN ({marks})",
                (time.time(), owner, *ids),
            )

    def take_back(self, is_dead: Callable[[str, str, float], bool]) -> list[Job]:
        """Jobs whose owning process died mid-run (`is_dead(id, owner, heartbeat_at)`): queued
        again, or failed after MAX_ATTEMPTS starts. Returns those that failed (they reached a
        final status here). Each change is conditional on the owner seen, so two instances taking
        back the same job at once change it once."""
        failed: list[Job] = []
        rows = self.db.execute(
            "SELECT id, COALESCE(owner, ''), attempts, COALESCE(heartbeat_at, started_at, 0) FROM jobs "
            "WHERE status = 'in_progress'"
        )
        for job_id, owner, attempts, heartbeat_at in rows:
            if not is_dead(job_id, owner, float(heartbeat_at)):
                continue
            if attempts >= MAX_ATTEMPTS:
                error = ImagegateError(
                    f"The job was interrupted {attempts} times (the gateway stopped while it ran) and is not run "
                    "again.",
                    code="job_interrupted",
                ).to_openai_json()["error"]
                updated = self.db.execute(
                    "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, owner = NULL "
                    "WHERE id = ? AND status = 'in_progress' AND COALESCE(owner, '') = ? RETURNING id",
                    (time.time(), jsonio.dumps(error).decode(), job_id, owner),
                )
                if updated:
                    job = self.get(job_id)
                    if job is not None:
                        failed.append(job)
                    log.warning("job %s: interrupted %d times, marked failed", job_id, attempts)
            else:
                requeued = self.db.execute(
                    "UPDATE jobs SET status = 'queued', owner = NULL WHERE id = ? AND status = 'in_progress' "
                    "AND COALESCE(owner, '') = ? RETURNING id",
                    (job_id, owner),
                )
                if requeued:
                    log.warning("job %s: its process (%s) died while it ran; queued to run again", job_id, owner)
        return failed

    # -- kept events --

    def clear_events(self, job_id: str) -> None:
        self.db.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
        self._remove_legacy(job_id, "events")

    def add_event(self, job_id: str, seq: int, data: bytes, owner: str | None = None) -> bool:
        """Keep one event (the `seq`-th of the job's run). With `owner`, only while that owner still
        runs the job: a process taken for dead that is not (cut off for a while) adds nothing to
        the run that replaced it, nor to a job that has ended. False when nothing was kept."""
        now = time.time()
        if owner is None:
            rows = self.db.execute(
                "INSERT INTO job_events (job_id, seq, data, created_at) VALUES (?, ?, ?, ?) RETURNING seq",
                (job_id, seq, data, now),
            )
        else:
            rows = self.db.execute(
                "INSERT INTO job_events (job_id, seq, data, created_at) SELECT ?, ?, ?, ? WHERE EXISTS ("
                "  SELECT 1 FROM jobs WHERE id = ? AND status = 'in_progress' AND owner = ?"
                ") RETURNING seq",
                (job_id, seq, data, now, job_id, owner),
            )
        return bool(rows)

    def event_rows(self, job_id: str, start: int = 0) -> list[tuple[int, bytes]]:
        """The job's kept events numbered `start` and after, in order, with their numbers."""
        rows = self.db.execute(
            "SELECT seq, data FROM job_events WHERE job_id = ? AND seq >= ? ORDER BY seq", (job_id, start)
        )
        if not rows and start == 0:
            return self._legacy_events(job_id)
        return [(int(seq), bytes(data)) for seq, data in rows]

    def events(self, job_id: str, start: int = 0) -> list[bytes]:
        """The job's kept events from the `start`-th on, in order."""
        return [data for _, data in self.event_rows(job_id, start)]

    def purge_expired(self, ttl_seconds: float) -> int:
        """Kept events (and any leftover inputs) of jobs that ended more than a result TTL ago:
        they hold the same images as the results, which have expired by then. Returns how many
        jobs had any."""
        cutoff = time.time() - ttl_seconds
        purged: set[str] = set()
        for table in ("job_events", "job_inputs"):
            # Driven by the kept rows (few: recent jobs), not by every job that ever ended.
            rows = self.db.execute(
                f"DELETE FROM {table} WHERE job_id IN ("
                f"  SELECT j.id FROM jobs j JOIN (SELECT DISTINCT job_id FROM {table}) k ON k.job_id = j.id"
                "  WHERE j.finished_at IS NOT NULL AND j.finished_at <= ?"
                ") RETURNING job_id",
                (cutoff,),
            )
            purged.update(row[0] for row in rows)
        purged.update(self._purge_legacy(cutoff))
        return len(purged)

    # -- what an older version kept as files --

    def _legacy_events(self, job_id: str) -> list[tuple[int, bytes]]:
        if self.legacy_directory is None:
            return []
        directory = self.legacy_directory / job_id / "events"
        try:
            names = sorted(p.name for p in directory.iterdir() if p.name.endswith(LEGACY_EVENT_SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for seq, name in enumerate(names):
            with contextlib.suppress(FileNotFoundError):
                found.append((seq, (directory / name).read_bytes()))
        return found

    def _remove_legacy(self, job_id: str, part: str) -> None:
        if self.legacy_directory is not None:
            shutil.rmtree(self.legacy_directory / job_id / part, ignore_errors=True)

    def _purge_legacy(self, cutoff: float) -> set[str]:
        """Old jobs' directories, once their job ended a TTL ago (the directory lists few)."""
        if self.legacy_directory is None or not self.legacy_directory.is_dir():
            return set()
        purged = set()
        for path in self.legacy_directory.iterdir():
            rows = self.db.execute("SELECT finished_at FROM jobs WHERE id = ?", (path.name,))
            if rows and rows[0][0] is not None and rows[0][0] <= cutoff:
                shutil.rmtree(path, ignore_errors=True)
                purged.add(path.name)
        return purged


# --- usage, once per job ---------------------------------------------------------------------


class JobUsage:
    """The service's usage sink: the gateway's usage log, except for re-runs of jobs whose first
    run had already recorded usage (their request ids are in `counted`)."""

    def __init__(self, inner: UsageSink) -> None:
        self.inner = inner
        self.counted: set[str] = set()

    @property
    def queued(self) -> bool:
        return bool(getattr(self.inner, "queued", False))

    def record(self, usage: UsageRecord) -> None:
        if usage.request_id in self.counted:
            log.info(
                "request %s: a re-run of a job whose usage is already recorded; not counted again", usage.request_id
            )
            return
        self.inner.record(usage)

    def mark_delivered(self, request_id: str) -> None:
        """A job's answer is stored, so its client can fetch it: its usage row counts as delivered."""
        mark = getattr(self.inner, "mark_delivered", None)
        if mark is not None:
            mark(request_id)


# --- the runner ------------------------------------------------------------------------------


def _owner_process(owner: str) -> tuple[str, int | None]:
    """(host, pid) of an owner `host:pid:token` (or `host:pid`, as an older version wrote it)."""
    parts = owner.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), int(parts[-2])
    if len(parts) >= 2 and parts[-1].isdigit():
        return ":".join(parts[:-1]), int(parts[-1])
    return owner, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass
class Renderers:
    """How a job's answer and events are rendered (server/render.py, server/streaming.py): given
    by the server so this module needs no HTTP code."""

    result: ResultRenderer
    partial: PartialRenderer
    completed: CompletedRenderer
    error: ErrorRenderer


def _no_hook(job: Job) -> None:
    return None


@dataclass
class _Run:
    """One job running here. A cancel stops only its pipeline (`work`); the run itself still
    keeps the job's end (cleanup, the hook). Only a shutdown cancels the whole run (`task`)."""

    task: asyncio.Task[None] | None = None
    work: asyncio.Future[ImagesOutcome] | None = None
    cancel_requested: bool = False

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.work is not None:
            self.work.cancel()


class JobRunner:
    """Runs queued jobs, within the concurrency limits, on this process's event loop."""

    def __init__(
        self,
        store: JobStore,
        service: ImageService,
        results: ResultStore,
        usage: JobUsage,
        settings: Settings,
        *,
        on_finished: Callable[[Job], None] = _no_hook,
        signals: JobSignals | None = None,
    ) -> None:
        self.store = store
        self.service = service
        self.results = results
        self.usage = usage
        self.settings = settings
        # Called once, on the event loop, with the job in its final state (webhooks hook in here).
        self.on_finished = on_finished
        self.renderers: Renderers | None = None
        self.host = socket.gethostname()
        # host:pid:runner, the runner's own token telling apart two runners of one process (two
        # Gateways, as in tests) and a process from an earlier one that had its pid.
        self.owner = f"{self.host}:{os.getpid()}:{secrets.token_hex(4)}"
        self._runs: dict[str, _Run] = {}
        self._wake = asyncio.Event()
        # Wake-ups between instances (Redis pub/sub) or in this process only (jobsignals.py).
        self.signals = signals or JobSignals()
        self.signals.add_listener(self._heard)
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def sweep_seconds(self) -> float:
        """How often the runner renews its heartbeats and looks for dead owners' jobs: often enough
        that a live owner's heartbeat never looks stale to another instance."""
        return min(POLL_SECONDS, self.settings.job_heartbeat_stale_seconds / 3)

    # -- lifecycle --

    async def start(self, renderers: Renderers) -> None:
        self.renderers = renderers
        await self.signals.start()
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Shutdown: running jobs are queued again (the next start runs them; no attempt is
        counted), and nothing new is started."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if tasks:
            self.signals.queued()  # queued again: another instance may take them now
        await self.signals.aclose()

    def wake(self) -> None:
        self._wake.set()

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next news (an event kept, a status reached), on whichever
        instance: take it before reading the job, wait on it after."""
        return self.signals.watch(job_id)

    def _heard(self, job_id: str | None) -> None:
        """Another instance's news: a job queued (look for work), or news of a job we run (it may
        have been cancelled there)."""
        if job_id is None or job_id in self._runs:
            self.wake()

    def _changed(self, job_id: str) -> None:
        self.signals.changed(job_id)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        swept_at = -math.inf
        while True:
            try:
                if loop.time() - swept_at >= self.sweep_seconds:
                    swept_at = loop.time()
                    await self._take_back_and_reap()
                else:  # woken between sweeps: by a submit, a run's end or a cancel elsewhere
                    await self._reap_cancelled()
                while not self._stopping and (job := await self._claim()) is not None:
                    run = self._runs[job.id] = _Run()
                    run.task = asyncio.create_task(self._run(job, run))
                    self._changed(job.id)  # in_progress now: news for its followers
            except asyncio.CancelledError:
                raise
            except Exception:  # keep running jobs; one failed sweep (a locked database) must not stop it
                log.exception("job runner: a sweep failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, swept_at + self.sweep_seconds - loop.time())):
                    await self._wake.wait()
            self._wake.clear()

    async def _claim(self) -> Job | None:
        s = self.settings
        return await asyncio.to_thread(self.store.claim, self.owner, s.job_concurrency, s.job_concurrency_per_key)

    def _is_dead(self, job_id: str, owner: str, heartbeat_at: float) -> bool:
        if owner == self.owner:  # ours: dead unless we run it
            return job_id not in self._runs
        host, pid = _owner_process(owner)
        if host == self.host and pid is not None and not _pid_alive(pid):
            return True  # a process of this host that is gone: at once
        # Another host's, or a live pid that may not be the owner's (another runner in that process,
        # or the pid reused after a crash): only its heartbeat tells.
        return heartbeat_at < time.time() - self.settings.job_heartbeat_stale_seconds

    async def _take_back_and_reap(self) -> None:
        """Our runs' heartbeat; jobs of dead processes back in the queue; local runs cancelled
        elsewhere stopped."""
        await asyncio.to_thread(self.store.heartbeat, self.owner, list(self._runs))
        for job in await asyncio.to_thread(self.store.take_back, self._is_dead):
            self._changed(job.id)
            self._finished(job)
        await self._reap_cancelled()

    async def _reap_cancelled(self) -> None:
        if not self._runs:
            return
        for job_id in await asyncio.to_thread(self.store.cancelled_among, list(self._runs)):
            if (run := self._runs.get(job_id)) is not None:
                run.cancel()

    # -- one job --

    async def _run(self, job: Job, run: _Run) -> None:
        try:
            await self._run_once(job, run)
        finally:
            # Only now: until its row is final, a run not in _runs looks like a dead process's.
            self._runs.pop(job.id, None)
            self.wake()

    async def _run_once(self, job: Job, run: _Run) -> None:
        renderers = self.renderers
        assert renderers is not None
        seq = 0
        writes: asyncio.Future[None] | None = None

        def keep(data: bytes) -> None:
            """Queue one event to be kept, after those before it."""
            nonlocal seq, writes
            index, seq = seq, seq + 1
            writes = asyncio.ensure_future(self._keep_event(job.id, index, data, writes))

        marking: list[asyncio.Future[None]] = []

        def listen(event: PipelineEvent) -> None:
            if event.kind == "image_partial" and event.image is not None and event.index is not None:
                keep(renderers.partial(job.event_prefix, event.index, event.image))
            elif event.kind == "stage_finished" and event.stage == "record_usage":
                marking.append(asyncio.ensure_future(asyncio.to_thread(self.store.mark_usage_counted, job.id)))

        status: Status = "failed"
        result: bytes | None = None
        error: dict[str, Any] | None = None
        names: list[str] = []
        counted_before = job.usage_counted
        try:
            await asyncio.to_thread(self.store.clear_events, job.id)  # a re-run starts its stream again
            if counted_before:
                self.usage.counted.add(job.request_id)
            run.work = asyncio.ensure_future(self.service.create(await self._image_job(job), on_event=listen))
            if run.cancel_requested:  # cancelled while its inputs were read
                run.work.cancel()
            outcome = await run.work
            result = renderers.result(outcome)
            for piece in renderers.completed(job.event_prefix, outcome):
                keep(piece)
            status = "succeeded"
            names = list(result_names((image.url for image in outcome.images), self.results))
        except asyncio.CancelledError:
            if not run.cancel_requested:  # a shutdown, not a cancel: the next start runs it
                await asyncio.to_thread(self.store.requeue, job.id, self.owner)
                raise
            status = "cancelled"
        except ImagegateError as exc:
            error = exc.to_openai_json()["error"]
            keep(renderers.error(exc))
        except Exception:
            log.exception("job %s failed", job.id)
            internal = ImagegateError("The server had an error while processing your request.")
            error = internal.to_openai_json()["error"]
            keep(renderers.error(internal))
        finally:
            self.usage.counted.discard(job.request_id)
        try:
            await asyncio.gather(*marking, return_exceptions=True)
            if writes is not None:
                await writes
            finished_at = time.time()
            if status == "succeeded":
                # The results live the TTL from the job's end, like the job's answer.
                await asyncio.to_thread(self.results.expire_at, names, finished_at + self.settings.result_ttl_seconds)
            if status != "cancelled":
                ended = await asyncio.to_thread(
                    self.store.finish, job.id, self.owner, status, finished_at=finished_at, result=result, error=error
                )
                if not ended:
                    status = "cancelled"  # cancelled while it was finishing: cancel won
                elif status == "succeeded":
                    await asyncio.to_thread(self.usage.mark_delivered, job.request_id)
            await asyncio.to_thread(self.store.remove_inputs, job.id)
            final = await asyncio.to_thread(self.store.get, job.id)
        finally:
            self._changed(job.id)
        if final is not None:
            self._finished(final)

    async def _keep_event(self, job_id: str, seq: int, data: bytes, previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            await previous
        try:
            await asyncio.to_thread(self.store.add_event, job_id, seq, data, self.owner)
        except DatabaseError:
            log.exception("job %s: could not keep event %d", job_id, seq)
        self._changed(job_id)

    async def _image_job(self, job: Job) -> ImageJob:
        request = job.request
        images, mask = await asyncio.to_thread(self.store.read_inputs, job)
        params = dict(request["params"])
        params.pop("webhook_url", None)  # the job's own (sent when it ends), not the pipeline's
        if params.get("partial_images"):
            params["stream"] = True  # its /events carries the partial images, as a stream would
        return ImageJob(
            mode=job.mode,
            params=params,
            images=images,
            mask=mask,
            request_id=job.request_id,
            client_request_id=request.get("client_request_id"),
            key_id=job.key_id,
            image_param=request.get("image_param") or "image",
            public_base_url=request.get("public_base_url"),
            request_base_url=request.get("request_base_url"),
            rate_checked=True,  # its key's rate limits were taken when it was submitted (service.check)
        )

    def _finished(self, job: Job) -> None:
        try:
            self.on_finished(job)
        except Exception:
            log.exception("job %s: the on_finished hook failed", job.id)

    # -- what the routes call --

    async def submit(self, image_job: ImageJob, model: str, webhook_url: str | None) -> Job:
        request = {
            "params": image_job.params,
            "image_param": image_job.image_param,
            "request_id": image_job.request_id,
            "client_request_id": image_job.client_request_id,
            "public_base_url": image_job.public_base_url,
            "request_base_url": image_job.request_base_url,
        }
        job = await asyncio.to_thread(
            lambda: self.store.add(
                job_id=new_job_id(),
                mode=image_job.mode,
                model=model,
                key_id=image_job.key_id,
                request=request,
                images=list(image_job.images),
                mask=image_job.mask,
                webhook_url=webhook_url,
                max_queued=self.settings.job_queue_max,
            )
        )
        self.wake()
        self.signals.queued()
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, a running one by cancelling its task (its upstream calls
        stop; what was paid is recorded by the pipeline as for any cancelled request)."""
        before, job = await asyncio.to_thread(self.store.cancel, job_id)
        run = self._runs.get(job_id)
        if run is not None and run.task is not None:
            run.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(run.task)  # this request leaving must not cancel the run
        elif before == "queued":
            await asyncio.to_thread(self.store.remove_inputs, job_id)
            self._changed(job_id)
            self._finished(job)
        else:  # it runs on another process: its runner stops it when it hears this, or at its next sweep
            self._changed(job_id)
        return (await asyncio.to_thread(self.store.get, job_id)) or job
