"""When an answer has reached its client: the moment a usage row counts as delivered.

An ASGI application cannot tell: uvicorn's `send()` returns quietly on a connection that is gone
(httptools_impl.RequestResponseCycle.send), and after the last body message `receive()` says
"disconnect" whether or not the client had it. The server can. So our protocol
(serving.GuardedHttpToolsProtocol) offers the ASGI extension `imagegate.delivered` in each
request's scope: a list the application appends callbacks to. The protocol calls them once the
response's last byte has left the process for the kernel's socket buffer (the transport's buffer
is empty) while the connection was open: at once when the last body message went straight out,
or later when it drains, or when a graceful close flushed it. A connection lost before that (the
client hung up or reset) calls none of them.

Served by another ASGI server (no extension in the scope), `when_delivered` falls back to the
response's background task: after the application's last `send()` returned, which is as much as
ASGI says.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from ..usage import UsageLog

log = logging.getLogger("imagegate")

EXTENSION = "imagegate.delivered"
Callback = Callable[[], None]


def offer(scope: dict[str, object]) -> list[Callback]:
    """The server side: a fresh callback list in the request's scope."""
    callbacks: list[Callback] = []
    extensions = scope.setdefault("extensions", {})
    if isinstance(extensions, dict):
        extensions[EXTENSION] = callbacks
    return callbacks


def run_callbacks(callbacks: list[Callback]) -> None:
    """The server side, once: each callback, none stopping the others."""
    pending, callbacks[:] = list(callbacks), []
    for callback in pending:
        try:
            callback()
        except Exception:
            log.exception("a delivered-answer callback failed")


def mark_usage(usage: UsageLog, request_id: str) -> Callback:
    """The callback that marks a request's usage row delivered: a journal line, or (the inline
    writer) an UPDATE in a worker thread, off the event loop the callbacks run on."""
    if usage.queued:
        return lambda: usage.mark_delivered(request_id)

    def in_thread() -> None:
        asyncio.get_running_loop().run_in_executor(None, usage.mark_delivered, request_id)

    return in_thread


def when_delivered(request: Request, response: Response, callback: Callback) -> Response:
    """Call `callback` once `response` has been written to the client (never if the client went
    away first); returns the response."""
    callbacks = request.scope.get("extensions", {}).get(EXTENSION)
    if isinstance(callbacks, list):
        callbacks.append(callback)
    else:
        response.background = BackgroundTask(callback)
    return response
