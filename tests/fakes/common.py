"""Pieces shared by the fake upstreams: request recording, scripted behaviours, lifecycle.

Each fake is a Starlette app run by `LoopbackServer`; tests drive it from the main thread
while handlers run on the server thread, so shared state is limited to atomic list/deque ops.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Self

from starlette.requests import Request
from starlette.responses import Response

from .server import LoopbackServer


class FilePart(NamedTuple):
    """One multipart file part; unpacks as (field_name, filename, content_type, data)."""

    field_name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """What a fake received, recorded even when it rejected the request."""

    path: str
    headers: dict[str, str]  # lower-cased names
    json: Any = None  # parsed JSON body, if the body was JSON
    model: str | None = None
    method: str = "POST"
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    form: dict[str, str] | None = None  # multipart text fields (last value wins)
    form_items: list[tuple[str, str]] | None = None  # multipart text fields, all, in order
    files: list[FilePart] | None = None  # multipart file parts, in order


# --- scripted behaviours understood by every fake ---------------------------------------


@dataclass(frozen=True)
class Hang:
    """Wait `seconds` (asynchronously) and then answer normally; for client-timeout tests.

    Ends early if the client disconnects or the fake shuts down."""

    seconds: float = 3600.0


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` and then answer normally; for concurrency tests."""

    seconds: float


@dataclass(frozen=True)
class MalformedJSON:
    """HTTP 200, content-type application/json, truncated body (fake-specific default)."""

    body: str | None = None


@dataclass(frozen=True)
class RawResponse:
    """Answer exactly this, e.g. an HTML 502 from a proxy in front of the upstream."""

    status: int
    body: bytes | str = b""
    content_type: str = "text/html"
    headers: dict[str, str] | None = None


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """Compact JSON like the real APIs (and without Starlette's JSONResponse re-encoding)."""
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def raw_response(behaviour: RawResponse) -> Response:
    return Response(
        behaviour.body,
        status_code=behaviour.status,
        media_type=behaviour.content_type,
        headers=behaviour.headers,
    )


class BaseFake:
    """Lifecycle, recording, behaviour queue and concurrency counters for a fake upstream."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.default_behaviour: Any = None  # used when the queue is empty; None = success
        self.active = 0  # requests in flight right now
        self.max_concurrency = 0  # most requests ever in flight at once
        self.cancelled = 0  # requests whose client went away during a Hang/Delay
        self._queue: collections.deque[Any] = collections.deque()
        self._closing = threading.Event()
        self._server: LoopbackServer | None = None

    # --- lifecycle ---
    def app(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> Self:
        """Start the HTTP server (blocks until it listens)."""
        self._closing.clear()
        self._server = LoopbackServer(self.app()).start()
        return self

    def stop(self) -> None:
        """Stop the server; Hang/Delay in progress end at once."""
        self._closing.set()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Server root, e.g. "http://127.0.0.1:54321"."""
        if self._server is None:
            raise RuntimeError("fake is not running; use it as a context manager")
        return self._server.url

    # --- scripting ---
    def enqueue(self, *behaviours: Any) -> None:
        """Script the next requests, one behaviour each, in order."""
        self._queue.extend(behaviours)

    def next_behaviour(self) -> Any:
        try:
            return self._queue.popleft()
        except IndexError:
            return self.default_behaviour

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet consumed."""
        return len(self._queue)

    def reset(self) -> None:
        """Forget recorded requests, scripted behaviours and counters."""
        self.requests.clear()
        self._queue.clear()
        self.default_behaviour = None
        self.max_concurrency = self.active
        self.cancelled = 0

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        """Block (test thread) until `count` requests have arrived; for hang/cancel tests."""
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} requests, got {len(self.requests)}")
            time.sleep(0.005)

    # --- helpers for handlers (server thread) ---
    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Count in-flight requests; single event loop, so no lock is needed."""
        self.active += 1
        self.max_concurrency = max(self.max_concurrency, self.active)
        try:
            yield
        finally:
            self.active -= 1

    async def record(self, request: Request) -> RecordedRequest:
        body = await request.body()
        recorded = RecordedRequest(
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            method=request.method,
            query=dict(request.query_params),
            body=body,
        )
        self.requests.append(recorded)
        return recorded

    async def sleep(self, request: Request, seconds: float) -> bool:
        """Sleep unless the client disconnects or the fake stops; False if cut short."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._closing.is_set():
                return False
            if await request.is_disconnected():
                self.cancelled += 1
                return False
            await asyncio.sleep(min(0.02, left))
        return True


def parse_json(body: bytes) -> tuple[bool, Any]:
    """(ok, value): JSON decode that never raises."""
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None
