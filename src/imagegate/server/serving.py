"""How the gateway is served: uvicorn, hardened against slow and numerous connections.

uvicorn 0.54's protocols start no timer before their first response: a connection that drips
its request head or body a byte at a time, or sends nothing at all, is held forever, and each
holds a file descriptor. Once descriptors run out, `accept()` fails with EMFILE and asyncio logs
every failed attempt with a traceback (up to `backlog` attempts per loop tick). So:

- `GuardedHttpToolsProtocol` (uvicorn's httptools protocol, a C parser at about half h11's CPU
  per request, with `_Guard`) closes a connection whose request head is not complete within
  `IMAGEGATE_HEADER_TIMEOUT_SECONDS` (a 408), which sends nothing for
  `IMAGEGATE_IDLE_TIMEOUT_SECONDS` while the server waits on it (an unfinished head or body,
  or keep-alive between requests), or whose body trickles in slower than
  `IMAGEGATE_MIN_BODY_BYTES_PER_SECOND` on average (after a grace of one header timeout: a
  body dripped a byte a second is never idle). While the application works on a request, or
  has stopped reading (flow control), the client is not the slow one and no clock runs.
- It refuses connections beyond `IMAGEGATE_MAX_CONNECTIONS` with a 503: by default the
  descriptor limit, raised from soft to hard at start, less a reserve for upstream sockets,
  result files and the database, so the gateway itself never runs out of descriptors.
- `guarded_loop` is the event loop (uvicorn's `loop` setting) when the cap is set past the
  descriptor limit: accept failures are logged once per interval, with a count, instead of once
  per attempt. Otherwise `fast_loop`, uvloop (`loop_for` says why).
- `follow_master` makes a `--workers` process exit when the master dies, even by SIGKILL.
- `--workers` processes share their metrics through a private `PROMETHEUS_MULTIPROC_DIR` the
  master makes before starting them and removes at exit; `Supervisor` tells the metrics when a
  worker is gone (imagegate.metrics).
- `IMAGEGATE_LOG_FORMAT=json`: every line, uvicorn's too, is one JSON object (imagegate.logs).
- It offers the `imagegate.delivered` ASGI extension (delivery.py): callbacks run once an answer
  has left the process while its connection was open, which is when a usage row counts as
  delivered.

`build_config` and `serve` build all of it from `Settings`; `imagegate serve` and the tests'
gateway fixture both use `build_config`, so tests exercise the served path.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import http
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from .. import memory, metrics
from ..config import Settings
from ..errors import ImagegateError, RequestTimeout, ServerBusy
from . import delivery

log = logging.getLogger("imagegate")

ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message (selector_events.py)
THROTTLE_INTERVAL_SECONDS = 10.0
# Descriptors kept back from client connections: upstream sockets, fetched images, result
# files, the database. A quarter of the limit, and never fewer than this.
MIN_DESCRIPTOR_RESERVE = 64
MIN_CONNECTIONS = 8
# Some systems report an unlimited hard limit that setrlimit refuses; this is plenty.
DESCRIPTOR_LIMIT_CAP = 1 << 20
WORKER_APP = "imagegate.server.app:app_from_env"
MASTER_POLL_SECONDS = 1.0
DRAIN_POLL_SECONDS = 0.05  # how often an answer still in the transport's buffer is looked at again
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Throttled:
    """A log line that may fire thousands of times a second: the first one is logged, then at
    most one per interval, saying how many were folded into it."""

    def __init__(self, interval: float = THROTTLE_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()  # tests serve from several threads (one loop each)
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(key, 0.0):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            folded = self._suppressed.pop(key, 0)
            self._next[key] = now + self.interval
        if folded:
            message += " (and %d more like it in the last %gs)"
            args = (*args, folded, self.interval)
        log.log(level, message, *args)
        return True


throttled = Throttled()


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    idle_timeout: float
    max_connections: int
    min_body_rate: float = 0.0  # bytes/s; 0: no body deadline


class ServingConfig(uvicorn.Config):
    """uvicorn's Config carrying our limits to every protocol instance (and, pickled, to workers)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits


def _raw_response(error: ImagegateError, extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer, written before the parser has a request (so not through it)."""
    body = json.dumps(error.to_openai_json()).encode()
    phrase = http.HTTPStatus(error.status_code).phrase
    head = (
        f"HTTP/1.1 {error.status_code} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra_headers}\r\n"
    )
    return head.encode("latin-1") + body


HEADER_TIMEOUT_RESPONSE = _raw_response(RequestTimeout("The request head was not received in time."))
BUSY_RESPONSE = _raw_response(
    ServerBusy("The server has too many open connections; try again shortly."), "retry-after: 1\r\n"
)


class _NotifyingFlow(FlowControl):
    """uvicorn's flow control, telling the protocol when reading resumes (the app asked for more
    body): from then on, the client is the one we wait for."""

    def __init__(self, transport: asyncio.Transport, protocol: _Guard) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._protocol.server_turn()
        super().pause_reading()

    def resume_reading(self) -> None:
        was_paused = self.read_paused
        super().resume_reading()
        self._protocol.client_turn(was_paused)


# What the client is doing, as the guard sees it: between requests, sending a request head,
# sending a body, or waiting for our answer (the application has the request).
Phase = str
IDLE, HEAD, BODY, ANSWER = "idle", "head", "body", "answer"


class _Guard:
    """A header timeout, an idle timeout, a body rate and a connection cap for a uvicorn protocol;
    the protocol says which phase the client is in (`_phase`).

    One timer per connection, re-armed lazily: bytes arriving only move a timestamp, and the timer,
    when it fires early, sets itself again for the new deadline."""

    # Set by the uvicorn protocol this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    flow: FlowControl
    cycle: Any

    def _guard_init(self, config: uvicorn.Config) -> None:
        if not isinstance(config, ServingConfig):
            raise TypeError(f"{type(self).__name__} needs a ServingConfig (see build_config)")
        self.limits = config.limits
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._head_deadline: float | None = None
        # The body's clock: when it started (moved on by the time reading was paused), bytes so far.
        self._body_started = 0.0
        self._body_received = 0
        self._paused_at: float | None = None
        self._refused = False

    def _phase(self) -> Phase:
        raise NotImplementedError

    def _guard_connection_made(self, transport: asyncio.Transport, over_limit: bool) -> None:
        if over_limit:
            self._refuse()
            return
        self.flow = _NotifyingFlow(transport, self)
        now = self.loop.time()
        self._last_activity = now
        self._head_deadline = now + self.limits.header_timeout
        self._arm()

    def _refuse(self) -> None:
        self._refused = True
        throttled.log(
            logging.WARNING,
            "connections",
            "refusing connections: %d are open (IMAGEGATE_MAX_CONNECTIONS=%d)",
            len(self.connections) - 1,
            self.limits.max_connections,
        )
        self.transport.write(BUSY_RESPONSE)
        self.transport.close()

    def _bytes_arrived(self) -> float:
        """Before the protocol parses new bytes; returns now."""
        now = self.loop.time()
        self._last_activity = now
        if self._head_deadline is None and self._phase() in (IDLE, HEAD):
            self._head_deadline = now + self.limits.header_timeout  # the next request on a kept-alive connection
        return now

    def _head_done(self) -> None:
        self._head_deadline = None
        self._body_started, self._body_received = self.loop.time(), 0

    def _answered(self) -> None:
        """A response is complete."""
        if self._phase() in (IDLE, HEAD):  # keep-alive: waiting for the client again, from now
            self._last_activity = self.loop.time()
            if self._head_deadline is None and self._phase() == HEAD:  # a pipelined, partial head
                self._head_deadline = self._last_activity + self.limits.header_timeout
        self._arm()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def server_turn(self) -> None:
        """Flow control stops reading (the application is behind): no clock runs on the client."""
        self._paused_at = self.loop.time()

    def client_turn(self, was_paused: bool) -> None:
        """The application asks for more body: idle time counts from now, and the body's clock
        does not count the pause (nor, before the first body byte, an Expect: 100-continue wait)."""
        now = self.loop.time()
        self._last_activity = now
        if was_paused and self._paused_at is not None:
            self._body_started += now - self._paused_at
        self._paused_at = None
        if self._body_received == 0:
            self._body_started = now
        self._arm()

    def _deadline(self) -> float | None:
        """When this connection expires, or None while the server (not the client) is the slow one."""
        if self._refused or self.transport.is_closing():
            return None
        phase = self._phase()
        if phase == BODY:
            if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):
                return None
        elif phase == ANSWER:
            return None  # the request is in: the application has it
        deadline = self._last_activity + self.limits.idle_timeout
        if self._head_deadline is not None:
            deadline = min(deadline, self._head_deadline)
        if phase == BODY and self.limits.min_body_rate > 0:
            allowed = self.limits.header_timeout + self._body_received / self.limits.min_body_rate
            deadline = min(deadline, self._body_started + allowed)
        return deadline

    def _arm(self) -> None:
        when = self._deadline()
        if when is None:
            return  # a running timer finds nothing to do when it fires
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        when = self._deadline()
        if when is None:
            return
        if when > self.loop.time():
            self._timer = self.loop.call_at(when, self._on_timer)
            return
        self._expire()

    def _expire(self) -> None:
        head_expired = self._head_deadline is not None and self._head_deadline <= self.loop.time()
        phase = self._phase()
        if head_expired and phase in (IDLE, HEAD):
            if phase == HEAD:  # it started a request: say why it ends
                self.transport.write(HEADER_TIMEOUT_RESPONSE)
            throttled.log(
                logging.INFO,
                "header-timeout",
                "closed a connection whose request head was not complete within %gs",
                self.limits.header_timeout,
            )
        elif phase == BODY:
            throttled.log(
                logging.INFO,
                "body-slow",
                "closed a connection whose request body stalled (idle %gs) or trickled (under %g bytes/s)",
                self.limits.idle_timeout,
                self.limits.min_body_rate,
            )
        # else an idle keep-alive connection (or one that never spoke): closing it is routine
        self.transport.close()


class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard; the parser's callbacks say which phase the
    client is in."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._guard_init(config)
        self._client_phase: Phase = IDLE
        # Answers written but still in the transport's buffer: their delivered callbacks wait for it to drain.
        self._draining: list[list[delivery.Callback]] = []
        self._closed_after_answer = False  # uvicorn closes gracefully after an answer (no keep-alive)
        super().__init__(config, server_state, app_state, _loop)

    def _phase(self) -> Phase:
        return self._client_phase

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over_limit = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self._guard_connection_made(transport, over_limit)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._bytes_arrived()
        super().data_received(data)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._client_phase = HEAD

    def on_headers_complete(self) -> None:
        self._client_phase = BODY
        self._head_done()
        super().on_headers_complete()
        self._offer_delivery()

    def _offer_delivery(self) -> None:
        """The request's `imagegate.delivered` callbacks, run when its cycle's answer is out."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:  # an upgrade: no HTTP cycle of its own
            return
        callbacks = delivery.offer(cycle.scope)  # type: ignore[arg-type]
        answered = cycle.on_response

        def on_response() -> None:  # the cycle's last body message was handed to the transport
            self._answer_written(callbacks)
            answered()

        cycle.on_response = on_response

    def _answer_written(self, callbacks: list[delivery.Callback]) -> None:
        if not callbacks:
            return
        if self.transport.get_write_buffer_size() == 0:
            delivery.run_callbacks(callbacks)
            return
        self._closed_after_answer = self.transport.is_closing()
        if not self._draining:
            self.loop.call_later(DRAIN_POLL_SECONDS, self._check_drained)
        self._draining.append(callbacks)

    def _check_drained(self) -> None:
        if not self._draining or self.transport.is_closing():
            return  # connection_lost decides
        if self.transport.get_write_buffer_size() > 0:
            self.loop.call_later(DRAIN_POLL_SECONDS, self._check_drained)
            return
        for callbacks in self._draining:
            delivery.run_callbacks(callbacks)
        self._draining.clear()

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._client_phase = ANSWER
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._client_phase == ANSWER:  # not a pipelined request already begun
            self._client_phase = IDLE
        super().on_response_complete()
        self._answered()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        # A close we made after the answer (no keep-alive) flushed it first; any other loss
        # (the client hung up or reset) left it undelivered.
        if exc is None and self._closed_after_answer:
            for callbacks in self._draining:
                delivery.run_callbacks(callbacks)
        self._draining.clear()
        super().connection_lost(exc)


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if context.get("message") == ACCEPT_FAILED:
        throttled.log(
            logging.WARNING,
            "accept",
            "accept() failed: %s; new connections wait in the backlog (descriptor limit %s)",
            context.get("exception"),
            descriptor_limit(),
        )
        return
    loop.default_exception_handler(context)


def guarded_loop() -> asyncio.AbstractEventLoop:
    """The server's event loop when accept() may fail (uvicorn's `loop` setting takes this import path)."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_loop_exception_handler)
    return loop


def fast_loop() -> asyncio.AbstractEventLoop:
    """uvloop, where the connection cap keeps accept() clear of EMFILE (see `loop_for`)."""
    import uvloop

    loop = uvloop.new_event_loop()
    loop.set_exception_handler(_loop_exception_handler)
    return loop


def loop_for(limits: ConnectionLimits, descriptors: int | None) -> str:
    """uvloop (libuv: less CPU per request in its transports and callbacks) unless the operator set
    the connection cap at or past the descriptor limit. There accept() can fail with EMFILE, and
    asyncio's loop keeps those connections waiting in the backlog and reports the failures (throttled
    above), where libuv would silently accept and drop them."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return f"{__name__}:guarded_loop"
    if descriptors is not None and limits.max_connections >= descriptors:
        return f"{__name__}:guarded_loop"
    return f"{__name__}:fast_loop"


def descriptor_limit() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_descriptor_limit() -> int | None:
    """Soft RLIMIT_NOFILE up to the hard limit (a default soft limit of 1024 is a few hundred
    slow clients); returns the limit now in force."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = DESCRIPTOR_LIMIT_CAP if hard == resource.RLIM_INFINITY else min(hard, DESCRIPTOR_LIMIT_CAP)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def default_max_connections(descriptors: int | None) -> int:
    if descriptors is None:
        return 1000
    reserve = max(MIN_DESCRIPTOR_RESERVE, descriptors // 4)
    return max(MIN_CONNECTIONS, descriptors - reserve)


def limits_from(settings: Settings) -> ConnectionLimits:
    max_connections = settings.max_connections or default_max_connections(descriptor_limit())
    return ConnectionLimits(
        settings.header_timeout_seconds,
        settings.idle_timeout_seconds,
        max_connections,
        settings.min_body_bytes_per_second,
    )


JSON_FORMATTER = {"()": "imagegate.logs.JsonFormatter"}


def _log_config(log_level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging, plus our `imagegate` logger on the same handler and level. JSON: every
    formatter is ours, other libraries' warnings go through it too (the root logger), and our access
    line (imagegate.access, with the key id, model and provider) replaces uvicorn's (build_config)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["imagegate"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    if log_format == "json":
        config["formatters"] = {"default": dict(JSON_FORMATTER), "access": dict(JSON_FORMATTER)}
        config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def build_config(app: Any, settings: Settings, *, log_level: str = "info", **options: Any) -> ServingConfig:
    """uvicorn's Config for `app` with our protocol, loop and limits; `options` override uvicorn's
    settings (the tests pass port 0 and their logging)."""
    descriptors = raise_descriptor_limit()
    limits = limits_from(settings)
    if descriptors is not None and limits.max_connections >= descriptors:
        log.warning(
            "IMAGEGATE_MAX_CONNECTIONS=%d is not below the descriptor limit (%d): accept() will fail "
            "before connections are refused",
            limits.max_connections,
            descriptors,
        )
    values: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "log_config": _log_config(log_level, settings.log_format),
        "http": GuardedHttpToolsProtocol,
        "loop": loop_for(limits, descriptors),
        # uvicorn's own keep-alive timer, kept in step with ours (it takes whole seconds).
        "timeout_keep_alive": max(1, round(settings.idle_timeout_seconds)),
        # X-Forwarded-* are judged by the gateway (IMAGEGATE_TRUSTED_PROXIES), not believed from any
        # loopback peer as uvicorn's default would.
        "proxy_headers": False,
        "access_log": settings.log_format != "json",  # JSON: imagegate.access is the access line
    }
    values.update(options)
    return ServingConfig(app, limits=limits, **values)


def serve(settings: Settings, *, log_level: str = "info") -> None:
    """`imagegate serve`: one process, or a master and `settings.workers` worker processes."""
    if settings.workers == 1:
        from .app import create_app

        memory.keep_request_buffers(settings.malloc_keep_bytes)
        server = uvicorn.Server(build_config(create_app(settings), settings, log_level=log_level))
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
            pass
        if not server.started:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE
        return
    # Worker processes build their own settings from the environment: hand them ours.
    os.environ.update({"IMAGEGATE_HOST": settings.host, "IMAGEGATE_PORT": str(settings.port)})
    config = build_config(WORKER_APP, settings, log_level=log_level, factory=True, workers=settings.workers)
    with metrics.private_multiprocess_dir():  # before any worker starts: they inherit it
        try:
            Supervisor(config, sockets=[config.bind_socket()]).run()
        except KeyboardInterrupt:
            pass


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, telling the metrics which workers are gone (died and replaced,
    restarted on SIGHUP, retired on SIGTTOU): their in-flight requests leave the sums."""

    def keep_subprocess_alive(self) -> None:
        self._forgetting_gone(super().keep_subprocess_alive)

    def restart_all(self) -> None:
        self._forgetting_gone(super().restart_all)

    def handle_ttou(self) -> None:
        self._forgetting_gone(super().handle_ttou)

    def _forgetting_gone(self, step: Any) -> None:
        before = {p.pid for p in self.processes}
        step()
        for pid in before - {p.pid for p in self.processes}:
            if pid is not None:
                metrics.forget_process(pid)


def follow_master() -> None:
    """In a worker: stop (gracefully, through uvicorn's SIGTERM handling) when the master dies.

    Linux asks the kernel to send SIGTERM when the parent dies (PR_SET_PDEATHSIG); a thread
    watching the parent pid does the same everywhere, and covers a master that died before the
    kernel was asked."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return  # not a spawned worker
    master = parent.pid
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the watcher alone
            pass
    watch_master(master)


def watch_master(master: int) -> None:
    """A daemon thread: SIGTERM to this process once its parent is no longer `master`."""
    threading.Thread(target=_watch, args=(master,), name="imagegate-master-watch", daemon=True).start()


def _watch(master: int) -> None:
    while os.getppid() == master:
        time.sleep(MASTER_POLL_SECONDS)
    log.warning("the master process (%d) is gone: this worker stops", master)
    os.kill(os.getpid(), signal.SIGTERM)
