"""A webhook receiver on loopback: records every POST and answers from a script.

    POST /hook    the next scripted answer: a status code (200, 500, 410, ...), a `Retry-After`
                  pair `(503, 1)`, `Slow(seconds)` (200 after that long), or `HANG` (no answer
                  until the sender gives up); once the script is used up, 200

`received` holds each request as it arrived (headers, raw body); `wait_for(n)` blocks until n
requests have arrived. A real HTTP server, so the sender's headers, body bytes and timeouts are
exercised exactly as a real receiver sees them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .server import LoopbackServer

HANG = "hang"


@dataclass(frozen=True)
class Slow:
    seconds: float


Answer = int | tuple[int, int] | str | Slow


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival


class WebhookReceiver:
    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.received: list[Received] = []
        self._arrived = threading.Condition()
        self._server = LoopbackServer(
            Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]), graceful_shutdown_s=1
        )

    @property
    def url(self) -> str:
        return f"{self._server.url}/hook"

    @property
    def port(self) -> int:
        return self._server.port

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self._arrived:
            self.received.append(Received(dict(request.headers), body, time.time()))
            answer: Answer = self.script.pop(0) if self.script else 200
            self._arrived.notify_all()
        if answer == HANG:
            await asyncio.sleep(3600)  # cancelled when the sender hangs up (or the server stops)
            return Response(status_code=200)
        if isinstance(answer, Slow):
            await asyncio.sleep(answer.seconds)
            return Response(status_code=200)
        if isinstance(answer, tuple):
            status, retry_after = answer
            return Response(status_code=status, headers={"retry-after": str(retry_after)})
        assert isinstance(answer, int)
        return Response(status_code=answer)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} webhook request(s) arrived, expected {count}")
            return list(self.received)

    def __enter__(self) -> WebhookReceiver:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()
