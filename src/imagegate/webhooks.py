"""Signed webhooks: when a job ends, the job is POSTed to the caller's `webhook_url`.

Everything on the wire follows Standard Webhooks 1.0.0 (standard-webhooks/standard-webhooks,
`spec/standard-webhooks.md`):

- The body is `{"type", "timestamp", "data"}` (spec "Payload structure"): `type` is a full-stop
  delimited event type (`image.job.succeeded` / `.failed` / `.cancelled`), `timestamp` is when the
  event occurred (the job's end, not the attempt), as ISO 8601 UTC like the spec's examples
  (`2022-11-03T20:26:10.344522Z`), and `data` is the job object.
- Headers (spec "Webhook headers"): `webhook-id`, the same on every retry of one message (the
  receiver's idempotency key); `webhook-timestamp`, integer unix seconds of this attempt (replay
  protection); `webhook-signature`, `v1,<base64 HMAC-SHA256>` over `{msg_id}.{timestamp}.{body}`
  (spec "Signature scheme"), keyed with the base64-decoded part of a `whsec_` secret of 24 to 64
  random bytes (spec table: "At least 24 bytes (192 bits, 512 maximum)").
- Verification is "a requirement for any secure webhook implementation" (spec "Verifying webhook
  authenticity"), so nothing is sent unsigned: a caller with no secret cannot ask for a webhook.
- Delivery (spec "Delivery success and failure"): a 2xx is success; anything else, a timeout or a
  dropped connection is retried with exponential backoff and jitter until `max_age_seconds` after
  the event. Redirects are not followed (spec: 3xx is a failure); `410 Gone` stops at once; a
  `Retry-After` is a floor on the next delay.

SSRF (spec "Server side request forgery"): webhook URLs are user input, so each attempt goes
through `fetch.guarded_client`, the same connection-level guard as image URLs: every address a
host resolves to is judged and the connection pinned to a checked one, and only
`IMAGEGATE_ALLOW_PRIVATE_URLS` lets a webhook reach loopback or private networks.

Deliveries are rows of `webhook_deliveries` (db.py), so they survive a restart: the sender's loop
claims due rows with a lease (another process sharing the database, or a restarted one, skips a
row while its lease runs, and takes it over once a dead owner's lease has run out).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from . import jsonio
from .db import Database
from .errors import InvalidRequest
from .fetch import (
    AddressNotAllowed,
    GuardedBackend,
    HostNotResolved,
    Resolver,
    guarded_client,
    is_private_literal,
    resolve_host,
)

log = logging.getLogger("imagegate.webhooks")

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec's minimum (192 bits)
MAX_SECRET_BYTES = 64  # the spec's maximum (512 bits)
GENERATED_SECRET_BYTES = 32

EVENT_TYPES = {
    "succeeded": "image.job.succeeded",
    "failed": "image.job.failed",
    "cancelled": "image.job.cancelled",
}

MAX_URL_LENGTH = 2048
MAX_DELAY_SECONDS = 4 * 3600.0  # the longest wait between two attempts, however many failed
LEASE_SLACK_SECONDS = 30.0  # a claimed row is another owner's for the attempt's timeout plus this
IDLE_POLL_SECONDS = 60.0  # with nothing due, look again this often (rows whose owner died)
CONCURRENT_DELIVERIES = 8


# --- secrets and signatures ---------------------------------------------------------------------


def generate_secret() -> str:
    """A fresh `whsec_` secret (32 random bytes), as the spec serializes symmetric keys."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(GENERATED_SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError when it is not of that form."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must look like {SECRET_PREFIX}<base64>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the part after {SECRET_PREFIX} is not valid base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a webhook secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, this one {len(key)}"
        )
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one attempt: `v1,` and the base64 HMAC-SHA256 of
    `{msg_id}.{timestamp}.{body}` (spec "Signature scheme")."""
    signed = b"%s.%d.%s" % (msg_id.encode("ascii"), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def iso_timestamp(seconds: float) -> str:
    """ISO 8601 in UTC with a `Z`, as the spec's payload examples."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_body(job: dict[str, Any]) -> bytes:
    """The webhook body for a job that has ended: its event type, when it ended, and the job.
    ValueError for a job that has not ended (there is no event for it)."""
    status = job.get("status")
    if status not in EVENT_TYPES:
        raise ValueError(f"a job with status {status!r} has no webhook event")
    finished = job.get("finished_at")
    occurred = float(finished) if isinstance(finished, int | float) else time.time()
    return jsonio.dumps({"type": EVENT_TYPES[status], "timestamp": iso_timestamp(occurred), "data": job})


# --- what the jobs side checks when a request asks for a webhook -------------------------------


def check_webhook_url(url: object, allow_private: bool) -> None:
    """What can be judged of a `webhook_url` before the job is accepted: an http(s) URL with a
    host, and no literal private address unless those are allowed. Names are judged at delivery,
    where they are resolved (a name could point elsewhere by then anyway)."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("'webhook_url' must be an http(s) URL.", param="webhook_url")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"'webhook_url' is longer than {MAX_URL_LENGTH} characters.", param="webhook_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidRequest(f"'webhook_url' is not a valid URL: {exc}.", param="webhook_url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("'webhook_url' must be an http(s) URL with a host.", param="webhook_url")
    if not allow_private and is_private_literal(parts.hostname):
        raise InvalidRequest(
            f"'webhook_url': {parts.hostname!r} is a private, loopback or link-local address; "
            "sending webhooks there is not allowed.",
            param="webhook_url",
            code="url_not_allowed",
        )


async def check_webhook_target(url: object, allow_private: bool, resolver: Resolver = resolve_host) -> None:
    """`check_webhook_url`, and the name resolved now: one that points at a private address is the
    same 400 at submit (`localhost` is refused before the job runs, not a day of retries later).
    A name that does not resolve yet passes; every attempt judges the addresses again anyway."""
    check_webhook_url(url, allow_private)
    if allow_private:
        return
    assert isinstance(url, str)
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        await GuardedBackend(allow_private=False, resolver=resolver).checked_addresses(host, port)
    except HostNotResolved:
        return
    except AddressNotAllowed as exc:
        raise InvalidRequest(
            f"'webhook_url': {host!r} resolves to a private, loopback or link-local address ({exc.address}); "
            "sending webhooks there is not allowed.",
            param="webhook_url",
            code="url_not_allowed",
        ) from exc


def require_secret(secret: str | None) -> str:
    """The caller's webhook secret, or the 400 that refuses its `webhook_url`: nothing is sent unsigned."""
    if secret is None:
        raise InvalidRequest(
            "'webhook_url' needs a webhook signing secret for your key: stored keys get one from "
            "`imagegate keys create`; static keys use IMAGEGATE_WEBHOOK_SECRET.",
            param="webhook_url",
            code="webhook_secret_missing",
        )
    return secret


# --- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id header
    job_id: str
    url: str
    secret: str
    body: bytes
    created_at: float
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: `status` when the receiver answered, `error` when it failed,
    `final` when no later attempt can succeed (410, a refused address)."""

    status: int | None
    error: str | None
    retry_after: float | None = None
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None  # delay-seconds only; an HTTP date is ignored


class WebhookSender:
    """Records deliveries and makes them, in a background loop between `start()` and `aclose()`.
    `enqueue` only writes the row (and wakes the loop), so a job that ends while the sender is
    stopped still gets its webhook once one starts on the same database."""

    def __init__(
        self,
        db: Database,
        *,
        allow_private: bool,
        timeout_seconds: float = 10.0,
        max_age_seconds: float = 86400.0,
        base_delay_seconds: float = 5.0,
        concurrency: int = CONCURRENT_DELIVERIES,
        resolver: Resolver = resolve_host,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.allow_private = allow_private
        self.timeout_seconds = timeout_seconds
        self.max_age_seconds = max_age_seconds
        self.base_delay_seconds = base_delay_seconds
        self.concurrency = concurrency
        self.resolver = resolver
        self.network_backend = network_backend
        self.clock = clock
        self._ssl_context: ssl.SSLContext | None = None  # loaded at start: the CA bundle is the slow part
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._attempts: dict[str, asyncio.Task[None]] = {}
        self._enqueues: set[asyncio.Task[str]] = set()  # enqueue_soon's inserts in flight

    # 1. Recording -----------------------------------------------------------------------------

    async def enqueue(self, job_id: str, url: str, secret: str, body: bytes) -> str:
        """Record a delivery of `body` (`event_body(job)`) to `url`, signed with `secret`, due now;
        its webhook-id. A job ends once: enqueueing it again (a job runner resumed after a crash
        between ending the job and recording its webhook) keeps the first delivery and its id."""
        secret_key(secret)  # a bad secret fails here, in the caller, not at every attempt
        delivery_id = "msg_" + secrets.token_hex(12)  # no '.': the spec forbids it in the signed id
        now = self.clock()
        rows = await self.db.run(
            self.db.execute,
            "INSERT INTO webhook_deliveries (id, job_id, url, secret, body, created_at, attempts, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (job_id) DO NOTHING RETURNING id",
            (delivery_id, job_id, url, secret, body, now, now),
        )
        if not rows:
            [(delivery_id,)] = await self.db.run(
                self.db.execute, "SELECT id FROM webhook_deliveries WHERE job_id = ?", (job_id,)
            )
        self._wake.set()
        return str(delivery_id)

    def enqueue_soon(self, job_id: str, url: str, secret: str, body: bytes) -> None:
        """`enqueue` from synchronous code on the event loop (a job runner's finished hook), without
        blocking it on the insert; `aclose` waits for such inserts before it stops."""
        secret_key(secret)  # the caller's mistake raises here, not in a task nobody awaits
        task = asyncio.create_task(self.enqueue(job_id, url, secret, body), name=f"webhook-enqueue-{job_id}")
        self._enqueues.add(task)
        task.add_done_callback(self._enqueued)

    def _enqueued(self, task: asyncio.Task[str]) -> None:
        self._enqueues.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a webhook delivery could not be recorded", exc_info=task.exception())

    def delivery_status(self, job_id: str) -> dict[str, Any] | None:
        """What the job object shows as `webhook` (None when the job asked for none)."""
        rows = self.db.execute(
            "SELECT url, attempts, last_status, last_error, delivered_at FROM webhook_deliveries WHERE job_id = ?",
            (job_id,),
        )
        if not rows:
            return None
        url, attempts, last_status, last_error, delivered_at = rows[0]
        return {
            "url": url,
            "attempts": attempts,
            "last_status": last_status,
            "last_error": last_error,
            "delivered_at": None if delivered_at is None else int(delivered_at),
        }

    def purge_finished(self, before: float) -> int:
        """Forget deliveries that ended (delivered or given up) before `before`; how many."""
        rows = self.db.execute(
            "DELETE FROM webhook_deliveries WHERE COALESCE(delivered_at, given_up_at) < ? RETURNING id", (before,)
        )
        return len(rows)

    # 2. The loop ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin delivering: pending rows (a previous run's included) are attempted when due."""
        if self._loop_task is None:
            self._ssl_context = await asyncio.to_thread(httpx.create_ssl_context, trust_env=False)
            self._loop_task = asyncio.create_task(self._run(), name="webhook-sender")

    async def aclose(self) -> None:
        """Stop; attempts in flight are cut and their rows released for the next start."""
        await asyncio.gather(*self._enqueues, return_exceptions=True)  # recorded before anything stops
        held = list(self._attempts)
        tasks = [t for t in (self._loop_task, *self._attempts.values()) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for delivery_id in held:  # unless the cut attempt was recorded after all, it is due again at once
            self.db.execute("UPDATE webhook_deliveries SET lease_until = NULL WHERE id = ?", (delivery_id,))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait = IDLE_POLL_SECONDS
            try:
                free = self.concurrency - len(self._attempts)
                due, next_due = await self.db.run(self._claim_due, self.clock(), free)
                for delivery in due:
                    task = asyncio.create_task(self._attempt(delivery), name=f"webhook-{delivery.id}")
                    self._attempts[delivery.id] = task
                # Every slot taken: the next wake-up is an attempt ending, not the next due row.
                if next_due is not None and len(self._attempts) < self.concurrency:
                    wait = min(wait, max(0.0, next_due - self.clock()))
            except Exception:  # a locked or failing database: try again later, never stop the loop
                log.exception("webhook deliveries could not be read")
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancel that lands as the
            # event is set, and this loop then outlives aclose(), which waits for it forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _claim_due(self, now: float, limit: int) -> tuple[list[Delivery], float | None]:
        """Take up to `limit` due rows nobody holds; and when the next pending row falls due."""
        with self.db.transaction() as conn:
            rows = (
                conn.execute(
                    "SELECT id, job_id, url, secret, body, created_at, attempts FROM webhook_deliveries"
                    " WHERE next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
                    " ORDER BY next_attempt_at LIMIT ?",
                    (now, now, limit),
                ).fetchall()
                if limit > 0
                else []
            )
            lease = now + self.timeout_seconds + LEASE_SLACK_SECONDS
            for row in rows:
                conn.execute("UPDATE webhook_deliveries SET lease_until = ? WHERE id = ?", (lease, row[0]))
            (next_due,) = conn.execute(
                # CASE, not the scalar MAX(a, b): SQLite and PostgreSQL (GREATEST) name it differently.
                "SELECT MIN(CASE WHEN lease_until > next_attempt_at THEN lease_until ELSE next_attempt_at END)"
                " FROM webhook_deliveries"
                " WHERE next_attempt_at IS NOT NULL"
            ).fetchone()
        deliveries = [
            Delivery(id=r[0], job_id=r[1], url=r[2], secret=r[3], body=bytes(r[4]), created_at=r[5], attempts=r[6])
            for r in rows
        ]
        return deliveries, next_due

    # 3. One attempt ---------------------------------------------------------------------------

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            outcome = await self._post(delivery)
            await self.db.run(self._record, delivery, outcome)
        except Exception:  # a bug or a database failure: the lease runs out and the row is tried again
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
        finally:
            self._attempts.pop(delivery.id, None)
            self._wake.set()  # a slot is free

    async def _post(self, delivery: Delivery) -> Outcome:
        try:
            check_webhook_url(delivery.url, self.allow_private)
        except InvalidRequest as exc:
            return Outcome(None, exc.message, final=True)
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery.secret, delivery.id, timestamp, delivery.body),
        }
        client = guarded_client(
            allow_private=self.allow_private,
            resolver=self.resolver,
            network_backend=self.network_backend,
            ssl_context=self._ssl_context,
        )
        try:
            async with asyncio.timeout(self.timeout_seconds):  # the whole attempt, not each read
                request = client.build_request(
                    "POST", delivery.url, content=delivery.body, headers=headers, timeout=self.timeout_seconds
                )
                response = await client.send(request, stream=True, follow_redirects=False)
                await response.aclose()  # the status is the answer; the body is never read
        except (TimeoutError, httpx.TimeoutException):  # httpx's own: the same limit, per phase
            return Outcome(None, f"no answer within {self.timeout_seconds:g} s")
        except AddressNotAllowed as exc:
            return Outcome(None, f"{exc.host!r} resolves to a non-public address; not allowed", final=True)
        except HostNotResolved as exc:
            return Outcome(None, f"cannot resolve host {exc.host!r}")
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            return Outcome(None, f"could not connect ({type(exc).__name__})")
        finally:
            await asyncio.shield(client.aclose())
        if 200 <= response.status_code < 300:
            return Outcome(response.status_code, None)
        return Outcome(
            response.status_code,
            f"HTTP {response.status_code}",
            retry_after=_retry_after(response),
            final=response.status_code == 410,  # spec: Gone means the receiver wants no more
        )

    def next_delay(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff from the base delay, doubled per failed attempt, with jitter over
        its upper half (never a retry right away); a receiver's Retry-After is a floor."""
        delay = min(MAX_DELAY_SECONDS, self.base_delay_seconds * 2 ** (attempts - 1))
        delay = random.uniform(delay / 2, delay)
        return min(MAX_DELAY_SECONDS, max(delay, retry_after or 0.0))

    def _record(self, delivery: Delivery, outcome: Outcome) -> None:
        now = self.clock()
        attempts = delivery.attempts + 1
        delivered_at = given_up_at = next_attempt_at = None
        error = outcome.error
        if outcome.delivered:
            delivered_at = now
        elif outcome.final:
            given_up_at = now
        else:
            next_attempt_at = now + self.next_delay(attempts, outcome.retry_after)
            if next_attempt_at > delivery.created_at + self.max_age_seconds:
                next_attempt_at, given_up_at = None, now
                error = f"gave up after {self.max_age_seconds:g} s: {outcome.error}"
        self.db.execute(
            "UPDATE webhook_deliveries SET attempts = ?, last_status = ?, last_error = ?, next_attempt_at = ?,"
            " lease_until = NULL, delivered_at = ?, given_up_at = ? WHERE id = ?",
            (attempts, outcome.status, error, next_attempt_at, delivered_at, given_up_at, delivery.id),
        )
        if given_up_at is not None:
            log.warning("webhook %s for job %s given up: %s", delivery.id, delivery.job_id, error)
