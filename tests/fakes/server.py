"""Run any ASGI app on a real loopback socket, in a background thread.

Fakes and gateway tests use real HTTP (not ASGI transports) so that connection handling,
timeouts, disconnects and wire formats are exercised exactly as in production.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import uvicorn

HOST = "127.0.0.1"


class LoopbackServer:
    """A uvicorn server on 127.0.0.1 with an OS-chosen port.

    `with LoopbackServer(app) as srv: srv.url` -> "http://127.0.0.1:PORT". `__enter__` returns
    only once the socket is listening, so the first request never races the startup.
    """

    def __init__(
        self,
        app: Any,
        *,
        lifespan: Literal["auto", "on", "off"] = "off",
        startup_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 10.0,
        graceful_shutdown_s: int = 2,
        config_factory: Callable[..., uvicorn.Config] | None = None,
    ) -> None:
        """`config_factory(app, **options)` builds the uvicorn Config (the gateway's own, from
        imagegate.server.serving); fakes get plain uvicorn."""
        self.app = app
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        config = (config_factory or uvicorn.Config)(
            app,
            host=HOST,
            port=0,
            lifespan=lifespan,
            log_config=None,  # leave global logging (and pytest's caplog) untouched
            log_level="warning",
            access_log=False,
            ws="none",  # no websockets import: keeps warnings-as-errors quiet
            proxy_headers=False,  # as `imagegate serve`: the gateway judges X-Forwarded-* itself
            # Bound the wait for in-flight requests (e.g. a scripted Hang) on exit.
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. "http://127.0.0.1:54321"."""
        if not self.port:
            raise RuntimeError("LoopbackServer is not running")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._server.started

    def start(self) -> LoopbackServer:
        """Start serving; block until the port is listening (or raise)."""
        if self._thread is not None:
            raise RuntimeError("LoopbackServer already started")
        self._thread = threading.Thread(target=self._run, name="loopback-uvicorn", daemon=True)
        self._thread.start()
        self._wait_started()
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and join its thread; idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._server.should_exit = True
        thread.join(self.shutdown_timeout_s)
        if thread.is_alive():  # in-flight requests refused to finish: cut them off
            self._server.force_exit = True
            thread.join(self.shutdown_timeout_s)
        self._thread = None

    def _run(self) -> None:
        """Thread body. Startup failures call sys.exit(), which we keep to report."""
        try:
            self._server.run()
        except BaseException as exc:  # noqa: BLE001 - reported by _wait_started
            self._error = exc

    def _wait_started(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._thread is not None
        while not self._server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(f"uvicorn failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.005)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
