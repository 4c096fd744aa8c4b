"""What log lines say about a request: its id, who asked, what served it, and why an upstream failed.

The request id is a context variable set once per request (server/middleware.py); every task the
request starts copies it, so code far from the HTTP layer (retries in dispatch.py) can name the
request without it being passed through every call. The same goes for the request's
`RequestRecord`: authentication notes the key id, the pipeline the model and what served it, and
the access line (`access`, one per request) reports all of it.

`IMAGEGATE_LOG_FORMAT=json` makes every line one JSON object (`JsonFormatter`): time, level,
logger, message, the request id where there is one, and the fields a line carries (`extra=
{"fields": {...}}`: the access line's and each upstream failure's). The text format is the plain
message, as it has always been.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import ImagegateError
from .resilience import is_upstream_failure

log = logging.getLogger("imagegate")
access_log = logging.getLogger("imagegate.access")
request_id_var: ContextVar[str | None] = ContextVar("imagegate_request_id", default=None)
# An upstream's message is quoted, not trusted: long bodies are cut so one failure stays one line.
MAX_MESSAGE_CHARS = 500
FIELDS = "fields"  # the LogRecord attribute (`extra={"fields": {...}}`) a line's own fields come in


def current_request_id() -> str | None:
    return request_id_var.get()


@dataclass
class RequestRecord:
    """What the access line says about one request, noted as the request learns it."""

    request_id: str | None
    key_id: str | None = None  # the key's id, never the key
    model: str | None = None  # as the client named it, once the catalog knew it
    provider: str | None = None  # what served it ("a,b" when a failover split it)
    adjustments: list[dict[str, str]] = field(default_factory=list)


request_record_var: ContextVar[RequestRecord | None] = ContextVar("imagegate_request_record", default=None)


def note_key(key_id: str | None) -> None:
    if (record := request_record_var.get()) is not None:
        record.key_id = key_id


def note_model(model: str) -> None:
    if (record := request_record_var.get()) is not None and record.model is None:  # a fallback keeps the first
        record.model = model


def note_served(provider: str, adjustments: list[dict[str, str]]) -> None:
    if (record := request_record_var.get()) is not None:
        record.provider, record.adjustments = provider, adjustments


def access(record: RequestRecord, method: str, route: str, status: int, latency_ms: float) -> None:
    """The request's one access line (INFO on `imagegate.access`)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": round(latency_ms, 1),
        "request_id": record.request_id,
        "key_id": record.key_id,
        "model": record.model,
        "provider": record.provider,
        "adjustments": record.adjustments,
    }
    access_log.info(
        "request: %s %s status=%d latency_ms=%.1f model=%s provider=%s key_id=%s adjustments=%d request_id=%s",
        method,
        route,
        status,
        latency_ms,
        record.model or "-",
        record.provider or "-",
        record.key_id or "-",
        len(record.adjustments),
        record.request_id or "-",
        extra={FIELDS: fields},
    )


def upstream_failure(provider: str, error: ImagegateError, *, attempt: int, attempts: int, retrying: bool) -> None:
    """One line per failed upstream call: provider, HTTP status (if the upstream answered),
    our error code, the upstream's message and the request id. A failure of the upstream is a
    WARNING; an upstream refusing the client's input (a 400 for the client) is INFO."""
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    status = error.upstream_status if error.upstream_status is not None else "-"
    level = logging.WARNING if is_upstream_failure(error) else logging.INFO
    fields = {
        "provider": provider,
        "upstream_status": error.upstream_status,
        "code": error.code,
        "attempt": attempt,
        "attempts": attempts,
        "retrying": retrying,
        "reason": message,
    }
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
        extra={FIELDS: fields},
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line (IMAGEGATE_LOG_FORMAT=json), whoever logs it (uvicorn too)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, under IMAGEGATE_WORKERS > 1
        }
        if request_id := current_request_id():
            entry["request_id"] = request_id
        entry.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
