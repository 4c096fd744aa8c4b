"""Job wake-ups: hints that someone must look at the jobs tables again, now.

A job's state lives only in the database (jobs.py): its row, its kept inputs and events. These
signals carry no state, only news, so one that is lost costs a poll interval, never a job:

- `queued()`: a job was submitted; every runner looks for work at once.
- `changed(job_id)`: a job has news (an event kept, a final status, a cancel); followers of its
  `/events` read again, and the runner running it checks whether it was cancelled.

`JobSignals` delivers them inside this process only; other processes sharing the database find the
news by polling it (followers every FOLLOW_POLL_SECONDS, runners every jobs.POLL_SECONDS).
`RedisJobSignals` (IMAGEGATE_REDIS_URL) also publishes each on one Redis pub/sub channel that every
instance subscribes to, so the news reaches every instance at once. Pub/sub delivers at most once
(a subscriber that is reconnecting misses messages), so followers still poll, rarely
(REDIS_FOLLOW_POLL_SECONDS), and a subscriber that (re)subscribes wakes everyone here.

    instance A: commit, then PUBLISH imagegate:jobs:<db> "changed <origin> <job id>"
    instance B: (subscribed) -> its followers of that job and, if it runs the job, its runner
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger("imagegate")

FOLLOW_POLL_SECONDS = 0.25  # without Redis: how often a follower reads the database again
REDIS_FOLLOW_POLL_SECONDS = 5.0  # with Redis: only a safety net for a message lost meanwhile
SUBSCRIBE_WAIT_SECONDS = 5.0  # how long start() waits for the subscription before going on without
RECONNECT_SECONDS = 1.0  # the first wait before subscribing again; doubles up to RECONNECT_MAX_SECONDS
RECONNECT_MAX_SECONDS = 30.0
REDIS_TIMEOUT_SECONDS = 5.0  # connecting, and one publish
LISTEN_SECONDS = 30.0  # the subscription's longest read: redis-py's health check (a PING) runs between
CLOSE_WAIT_SECONDS = 2.0  # publishes still in flight at shutdown get this long

# Called with a job id (news of that job) or None (a job was queued, or anything may have changed).
Listener = Callable[[str | None], None]


class JobSignals:
    """Wake-ups inside this process: per-job events for followers, listeners for the runner."""

    follow_poll_seconds = FOLLOW_POLL_SECONDS

    def __init__(self) -> None:
        # Only jobs someone follows now have an entry: it goes when its last follower drops it.
        self._watchers: weakref.WeakValueDictionary[str, asyncio.Event] = weakref.WeakValueDictionary()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """`listener` hears what other instances signal (never this one's own signals)."""
        self._listeners.append(listener)

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next news. Take it before reading the job and wait on it after,
        so that news between the read and the wait is not missed."""
        event = self._watchers.get(job_id)
        if event is None:
            event = asyncio.Event()
            self._watchers[job_id] = event
        return event

    def queued(self) -> None:
        """A job was committed to the queue (this process's runner is woken by its caller)."""

    def changed(self, job_id: str) -> None:
        """A job's news is committed: wake its followers here."""
        self._wake_followers(job_id)

    def _wake_followers(self, job_id: str) -> None:
        event = self._watchers.pop(job_id, None)
        if event is not None:
            event.set()

    def _heard(self, job_id: str | None) -> None:
        """Another instance's signal."""
        if job_id is not None:
            self._wake_followers(job_id)
        for listener in self._listeners:
            listener(job_id)

    def _wake_everyone(self) -> None:
        """After a gap in what we heard: everyone here looks again."""
        for event in list(self._watchers.values()):
            event.set()
        self._watchers.clear()
        for listener in self._listeners:
            listener(None)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def channel_name(db: int) -> str:
    """Pub/sub channels are shared by all of a Redis server's numbered databases: the channel names
    ours, so gateways on other database numbers of the same server do not hear our jobs."""
    return f"imagegate:jobs:{db}"


class RedisJobSignals(JobSignals):
    """Signals shared through Redis pub/sub (redis-py's asyncio client), so every instance hears
    every other's at once."""

    follow_poll_seconds = REDIS_FOLLOW_POLL_SECONDS

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        # Tells our own messages apart when they come back to us from the channel.
        self.origin = secrets.token_hex(8)
        self.received = 0  # messages heard from other instances (tests, diagnostics)
        self._client: Any = None  # redis.asyncio.Redis once started: publishes
        self._listener: Any = None  # another, without a read timeout: the subscription waits for news
        self._channel = ""
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._publish_failing = False  # logged once per outage, not once per publish
        self._publish_again_at = 0.0  # while failing, publishes before this (loop time) are dropped

    async def start(self) -> None:
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(
            self.url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        self._listener = redis.asyncio.Redis.from_url(
            self.url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_keepalive=True,
            health_check_interval=LISTEN_SECONDS,
        )
        self._channel = channel_name(int(self._client.connection_pool.connection_kwargs.get("db", 0)))
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                await self._subscribed.wait()
        except TimeoutError:
            log.warning(
                "job wake-ups: no Redis subscription yet (%s); other instances' jobs are seen by polling until it "
                "comes",
                self._channel,
            )

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=CLOSE_WAIT_SECONDS)
            for task in list(self._sending):
                task.cancel()
        for client in (self._client, self._listener):
            if client is not None:
                await client.aclose()
        self._client = self._listener = None

    def queued(self) -> None:
        self._publish(f"queued {self.origin}")

    def changed(self, job_id: str) -> None:
        super().changed(job_id)
        self._publish(f"changed {self.origin} {job_id}")

    def _publish(self, message: str) -> None:
        """Sent in the background: the caller (a request, a run) never waits on Redis."""
        if self._client is None:  # not started (the CLI): nobody else to tell
            return
        loop = asyncio.get_running_loop()
        if self._publish_failing and loop.time() < self._publish_again_at:
            return  # Redis is away: no pile of connection attempts; the others poll meanwhile
        task = loop.create_task(self._send(message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, message: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._client.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            if not self._publish_failing:
                log.warning("job wake-ups: cannot publish (%s); other instances see the news at their next poll", exc)
            self._publish_failing = True
            self._publish_again_at = asyncio.get_running_loop().time() + RECONNECT_SECONDS
        else:
            self._publish_failing = False

    def _on_message(self, data: bytes) -> None:
        kind, _, rest = data.decode(errors="replace").partition(" ")
        origin, _, job_id = rest.partition(" ")
        if origin == self.origin:
            return
        self.received += 1
        if kind == "queued":
            self._heard(None)
        elif kind == "changed" and job_id:
            self._heard(job_id)

    async def _read(self) -> None:
        """The subscription, for as long as we run: on any break, subscribe again (and wake
        everyone here, for what was missed meanwhile)."""
        from redis.exceptions import RedisError

        delay = RECONNECT_SECONDS
        while True:
            pubsub = self._listener.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_SECONDS)
                    if message is None:  # quiet for a while
                        continue
                    if message["type"] == "message":
                        self._on_message(message["data"])
                    elif message["type"] == "subscribe":
                        # After a gap (redis-py also subscribes again by itself after a reconnect),
                        # whatever was published meanwhile is lost: everyone looks again.
                        if self._subscribed.is_set():
                            self._wake_everyone()
                        self._subscribed.set()
                        delay = RECONNECT_SECONDS
            except (RedisError, OSError) as exc:
                if delay == RECONNECT_SECONDS:  # once per outage
                    log.warning("job wake-ups: the Redis subscription broke (%s); subscribing again", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


def open_job_signals(redis_url: str | None) -> JobSignals:
    """Redis pub/sub with IMAGEGATE_REDIS_URL, else this process only."""
    return RedisJobSignals(redis_url) if redis_url else JobSignals()
