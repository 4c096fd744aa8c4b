"""A loopback image host for URL-fetching tests: serves a PNG, redirects, and drips bytes.

    GET /a.png              a small PNG
    GET /redirect?to=URL    302 to URL
    GET /drip               200 with a large Content-Length, then one byte every `drip_interval`
                            seconds until the client goes away

`hits` lists every path requested (so a test can assert "zero requests"), `host_headers` the
Host header of each, and `open_drips` / `peak_drips` how many drips are being held at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from types import TracebackType

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .images import solid_png
from .server import LoopbackServer

PNG = solid_png(40, 30, (200, 100, 50))


class ImageHost:
    def __init__(self, drip_interval: float = 1.0) -> None:
        self.drip_interval = drip_interval
        self.hits: list[str] = []
        self.host_headers: list[str] = []
        self.open_drips = 0
        self.peak_drips = 0
        self._lock = threading.Lock()
        self._server = LoopbackServer(
            Starlette(
                routes=[
                    Route("/a.png", self._png),
                    Route("/redirect", self._redirect),
                    Route("/drip", self._drip),
                ]
            ),
            graceful_shutdown_s=1,
        )

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    def _record(self, request: Request) -> None:
        self.hits.append(request.url.path)
        self.host_headers.append(request.headers.get("host", ""))

    async def _png(self, request: Request) -> Response:
        self._record(request)
        return Response(PNG, media_type="image/png")

    async def _redirect(self, request: Request) -> Response:
        self._record(request)
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def _drip(self, request: Request) -> Response:
        self._record(request)

        async def body() -> AsyncIterator[bytes]:
            with self._lock:
                self.open_drips += 1
                self.peak_drips = max(self.peak_drips, self.open_drips)
            try:
                yield PNG[:8]
                while True:
                    await asyncio.sleep(self.drip_interval)
                    yield b"\x00"
            finally:
                with self._lock:
                    self.open_drips -= 1

        return StreamingResponse(body(), media_type="image/png", headers={"content-length": "1000000"})

    def __enter__(self) -> ImageHost:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()
