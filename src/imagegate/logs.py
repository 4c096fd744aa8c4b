"""What log lines say about a request: its id, and why an upstream failed, on one line.

The request id is a context variable set once per request (server/middleware.py); every task the
request starts copies it, so code far from the HTTP layer (retries in dispatch.py) can name the
request without it being passed through every call.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

from .errors import ImagegateError
from .resilience import is_upstream_failure

log = logging.getLogger("imagegate")
request_id_var: ContextVar[str | None] = ContextVar("imagegate_request_id", default=None)
# An upstream's message is quoted, not trusted: long bodies are cut so one failure stays one line.
MAX_MESSAGE_CHARS = 500


def current_request_id() -> str | None:
    return request_id_var.get()


def upstream_failure(provider: str, error: ImagegateError, *, attempt: int, attempts: int, retrying: bool) -> None:
    """One line per failed upstream call: provider, HTTP status (if the upstream answered),
    our error code, the upstream's message and the request id. A failure of the upstream is a
    WARNING; an upstream refusing the client's input (a 400 for the client) is INFO."""
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    status = error.upstream_status if error.upstream_status is not None else "-"
    level = logging.WARNING if is_upstream_failure(error) else logging.INFO
    log.log(
        level,
        "upstream failure: provider=%s status=%s code=%s attempt=%d/%d then=%s request_id=%s message=%s",
        provider,
        status,
        error.code,
        attempt,
        attempts,
        "retry" if retrying else "no-retry",
        current_request_id() or "-",
        json.dumps(message, ensure_ascii=False),
    )
