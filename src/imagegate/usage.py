"""Usage and cost records, one row per served request, and their totals over a period
(`imagegate usage`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .db import Database


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    key_id: str | None
    user: str | None
    model: str
    provider: str
    mode: str
    images: int
    cost: float
    input_tokens: int
    output_tokens: int
    cost_estimated: bool = False  # the provider's real price is not known (catalog `estimated`)
    client_request_id: str | None = None  # the client's x-request-id; request_id is the gateway's
    safety_identifier: str | None = None  # OpenAI's end-user safety id; like `user`, never sent upstream


Grouping = Literal["key", "model", "provider"]
# What each grouping reads; a fixed map, so no caller's text ever reaches the SQL.
GROUP_COLUMNS: dict[Grouping, str] = {"key": "key_id", "model": "model", "provider": "provider"}


@dataclass(frozen=True)
class UsageTotal:
    group: dict[Grouping, str | None]  # the grouping's values (key None: the gateway ran open)
    requests: int
    images: int
    cost: float


class UsageSink(Protocol):
    def record(self, usage: UsageRecord) -> None: ...


class UsageLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, usage: UsageRecord, at: float | None = None) -> None:
        """Store one served request, made now (or `at`, a Unix time)."""
        self.db.execute(
            "INSERT INTO usage (request_id, created_at, key_id, user, model, provider, mode, images, cost, "
            "input_tokens, output_tokens, cost_estimated, client_request_id, safety_identifier) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (usage.request_id, time.time() if at is None else at, usage.key_id, usage.user, usage.model,
             usage.provider, usage.mode, usage.images, usage.cost, usage.input_tokens, usage.output_tokens,
             int(usage.cost_estimated), usage.client_request_id, usage.safety_identifier),
        )

    def totals_by_model(self) -> list[tuple[str, int, int, float]]:
        """(model, requests, images, cost) over all records."""
        rows = self.db.execute(
            "SELECT model, COUNT(*), SUM(images), SUM(cost) FROM usage GROUP BY model ORDER BY model"
        )
        return [(str(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in rows]

    def totals(self, since: float, until: float, by: Sequence[Grouping]) -> list[UsageTotal]:
        """Requests, images and cost made in [since, until) (Unix times), one total per distinct
        combination of the `by` columns (one overall total when `by` is empty), largest cost first."""
        columns = [GROUP_COLUMNS[name] for name in by]
        selected = "".join(f"{c}, " for c in columns)
        grouped = f" GROUP BY {', '.join(columns)}" if columns else ""
        rows = self.db.execute(
            f"SELECT {selected}COUNT(*), COALESCE(SUM(images), 0), COALESCE(SUM(cost), 0) FROM usage "
            f"WHERE created_at >= ? AND created_at < ?{grouped}",
            (since, until),
        )
        totals = [
            UsageTotal(dict(zip(by, row[: len(by)], strict=True)), int(row[-3]), int(row[-2]), float(row[-1]))
            for row in rows
            if int(row[-3]) > 0 or not by
        ]
        return sorted(totals, key=lambda t: (-t.cost, [str(v) for v in t.group.values()]))
