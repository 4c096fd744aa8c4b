"""Cancel a request's work when its client disconnects.

Starlette does not cancel a handler whose client has gone; the work would run to the end (for
the local engine: minutes of GPU time for nobody). Once the body has been read, the next ASGI
`receive()` returns only when the client disconnects, so a watcher task waits on it and cancels
the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

# nginx's "client closed request": nobody reads it, but the access log says what happened.
CLIENT_CLOSED_REQUEST = 499


async def until_disconnected(request: Request, work: Coroutine[Any, Any, Response]) -> Response:
    task = asyncio.ensure_future(work)
    disconnected = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if not disconnected.is_set():
            raise  # the server itself is cancelling us (shutdown)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
